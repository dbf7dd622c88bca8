"""Django signals sent by django-qtasks.

``task_enqueued``: after a task row is written (inside the caller's transaction).
``task_started``: in the worker, just before the function runs.
``task_finished``: in the worker, after the result is stored.
``component_started`` / ``component_stopped``: a component of the worker process
(``worker``, ``broker``, ``storage``, ``global_config``, ``starter``) started or stopped.
"""

from django.dispatch import Signal

task_enqueued = Signal()  # kwargs: task (Task snapshot)
task_started = Signal()  # kwargs: task (Task snapshot)
task_finished = Signal()  # kwargs: task (Task snapshot), outcome (Outcome)
component_started = Signal()  # kwargs: component (object), name (str)
component_stopped = Signal()  # kwargs: component (object), name (str)
