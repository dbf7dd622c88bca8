"""GlobalConfig's static twin: the ``QTASKS`` setting, validated once.

Every key is known, typed and documented in ``docs/settings.md``; an unknown key or a
wrong type raises :class:`~django_qtasks.exceptions.ConfigurationError` naming it, so
a typo never silently falls back to a default.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from django_qtasks.cron import CronError, validate_cron, validate_tz
from django_qtasks.exceptions import ConfigurationError

# \Z, not $: "$" also matches before a final newline, which would let "a\n" through.
QUEUE_NAME_RE = re.compile(r"\A[A-Za-z0-9_.:-]{1,64}\Z")
PRIORITY_MIN, PRIORITY_MAX = -100, 100
# "worker": qtasks_worker runs tasks. "immediate": add_task() runs them at once, in the
# caller's thread (on commit inside transaction.atomic()), for tests; see docs/testing.md.
MODES = ("worker", "immediate")


@dataclass(frozen=True)
class ScheduleEntry:
    """One entry of ``QTASKS["SCHEDULE"]``: run ``task`` at every tick of ``cron``."""

    name: str
    task: str
    cron: str
    tz: str | None = None  # None: Django's TIME_ZONE
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    priority: int | None = None
    catch_up: bool = True


@dataclass(frozen=True)
class QTasksSettings:
    """The validated ``settings.QTASKS``; attribute names are the keys in lower case."""

    database: str = "default"
    mode: str = "worker"  # "immediate": add_task() runs the task in the caller's thread
    default_queue: str = "default"
    queues: tuple[str, ...] | None = None
    default_priority: int = 0
    default_retry: int = 0
    default_retry_backoff: float = 2.0
    retry_backoff_max: float = 3600.0
    default_max_time: float | None = None
    concurrency: int = 4
    prefetch: int = 32  # rows a worker may claim ahead of its free threads (prefetch.py)
    poll_interval: float = 1.0
    grace: float = 30.0
    result_poll_interval: float = 0.2
    max_args_size: int | None = 1_048_576
    listen_notify: bool | str = "auto"  # "auto": see cursors.session_state_wanted()
    durable_claims: bool = False  # True: a claim's commit waits for the WAL flush
    prepared_statements: bool | str = "auto"  # "auto": see cursors.session_state_wanted()
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 30.0
    rescue_interval: float = 15.0
    # Runs of one task that may be lost (its worker died, its connection was cut) and
    # still go back to the queue without spending an attempt; see docs/reliability.md.
    max_rescues: int = 3
    middlewares_before: tuple[str, ...] = ()
    middlewares_after: tuple[str, ...] = ()
    executor: str = "django_qtasks.worker.executor.TaskExecutor"
    storage: str = "django_qtasks.storage.DjangoStorage"
    global_config: str = "django_qtasks.global_config.DjangoGlobalConfig"
    broker: str = "django_qtasks.broker.DjangoBroker"
    worker: str = "django_qtasks.worker.ThreadWorker"
    starter: str = "django_qtasks.worker.starter.Starter"
    schedule: tuple[ScheduleEntry, ...] = ()
    prune_after: float | None = None
    prune_batch_size: int = 1000
    heartbeat_file: str | None = None  # touched on each heartbeat; see docs/operations.md
    metrics_token: str | None = None  # a bearer token the metrics view asks for
    extra: dict[str, Any] = field(default_factory=dict)


_NUMBER = (int, float)


def _check(key: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ConfigurationError(
            f"QTASKS[{key!r}] must be {expected}, got {type(value).__name__} {value!r}."
        )


# Longer than any sensible timeout or interval (a year); also what timedelta and a
# thread's wait() can hold. NaN and infinity fail every comparison or overflow later.
MAX_SECONDS = 366 * 24 * 3600.0


# Retries and concurrency are stored in (or compared with) 32-bit integer columns; no
# real setting comes near this.
MAX_COUNT = 1_000_000


def _finite(value: float) -> bool:
    """A real, bounded number of seconds: not NaN, not infinite, not past MAX_SECONDS."""
    return math.isfinite(value) and abs(value) <= MAX_SECONDS


def _is_str_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def _validate(key: str, value: Any) -> Any:
    """Return the value in its stored form, or raise naming the key."""
    name = key.lower()
    if name in {"database", "executor", "storage", "global_config", "broker", "worker", "starter"}:
        _check(key, value, isinstance(value, str) and bool(value), "a non-empty string")
        return value
    if name == "default_queue":
        _check(
            key,
            value,
            isinstance(value, str) and bool(QUEUE_NAME_RE.match(value)),
            "a queue name (letters, digits, _ . : -, at most 64)",
        )
        return value
    if name == "queues":
        if value is None:
            return None
        _check(key, value, _is_str_list(value) and bool(value), "None or a list of queue names")
        for queue in value:
            _check(key, queue, bool(QUEUE_NAME_RE.match(queue)), "a list of valid queue names")
        return tuple(value)
    if name in {"middlewares_before", "middlewares_after"}:
        _check(key, value, _is_str_list(value), "a list of dotted paths")
        return tuple(value)
    if name == "default_priority":
        _check(
            key,
            value,
            isinstance(value, int)
            and not isinstance(value, bool)
            and PRIORITY_MIN <= value <= PRIORITY_MAX,
            "an integer from -100 to 100",
        )
        return value
    if name in {"default_retry", "concurrency", "prefetch", "max_rescues"}:
        low = 1 if name == "concurrency" else 0
        _check(
            key,
            value,
            isinstance(value, int) and not isinstance(value, bool) and low <= value <= MAX_COUNT,
            f"an integer from {low} to {MAX_COUNT:,}",
        )
        return value
    if name == "mode":
        _check(key, value, value in MODES, " or ".join(repr(mode) for mode in MODES))
        return value
    if name in {"listen_notify", "prepared_statements"}:
        # "auto": off where the database settings say a transaction pooler is in front.
        ok = isinstance(value, bool) or value == "auto"
        _check(key, value, ok, "True, False or 'auto'")
        return value
    if name == "durable_claims":
        _check(key, value, isinstance(value, bool), "True or False")
        return value
    if name in {"default_max_time", "max_args_size"} and value is None:
        return None
    if name == "max_args_size":
        _check(
            key,
            value,
            isinstance(value, int) and not isinstance(value, bool) and value > 0,
            "None or a number of bytes > 0",
        )
        return value
    if name in {
        "default_retry_backoff",
        "retry_backoff_max",
        "default_max_time",
        "poll_interval",
        "grace",
        "result_poll_interval",
        "heartbeat_interval",
        "heartbeat_timeout",
        "rescue_interval",
    }:
        positive = name not in {"default_retry_backoff", "retry_backoff_max", "grace"}
        ok = isinstance(value, _NUMBER) and not isinstance(value, bool) and _finite(value)
        ok = ok and (value > 0 if positive else value >= 0)
        _check(
            key,
            value,
            ok,
            f"a finite number {'> 0' if positive else '>= 0'} (at most {MAX_SECONDS:g} s)",
        )
        return float(value)
    if name == "schedule":
        return _validate_schedule(key, value)
    if name == "prune_after":
        if value is None:
            return None
        ok = isinstance(value, _NUMBER) and not isinstance(value, bool) and value > 0
        ok = ok and _finite(value)
        _check(key, value, ok, "None or a finite number of seconds > 0")
        return float(value)
    if name == "prune_batch_size":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        _check(key, value, ok, "an integer >= 1")
        return value
    if name in {"heartbeat_file", "metrics_token"}:
        ok = value is None or (isinstance(value, str) and bool(value))
        _check(key, value, ok, "None or a non-empty string")
        if name == "metrics_token" and value is not None and not value.isascii():
            # HTTP headers are ASCII: a token of other characters can never match, and
            # comparing it failed every metrics request with a server error.
            raise ConfigurationError(f"QTASKS[{key!r}] must be ASCII characters only.")
        return value
    if name == "extra":
        _check(key, value, isinstance(value, dict), "a dict")
        return dict(value)
    known = sorted(f.name.upper() for f in fields(QTasksSettings))
    raise ConfigurationError(f"QTASKS has an unknown key {key!r}. Known keys: {', '.join(known)}.")


_SCHEDULE_KEYS = {f.name for f in fields(ScheduleEntry)} - {"name"}


def _validate_schedule(key: str, value: Any) -> tuple[ScheduleEntry, ...]:
    """``{"name": {"task": ..., "cron": ..., ...}}`` -> entries; errors name the entry."""
    _check(key, value, isinstance(value, dict), "a dict of schedule name -> dict")
    entries = []
    for name, raw in value.items():
        where = f"QTASKS[{key!r}][{name!r}]"
        if not isinstance(name, str) or not name or len(name) > 200:
            raise ConfigurationError(
                f"QTASKS[{key!r}] keys are schedule names (non-empty strings, at most 200 "
                f"characters); got {name!r}."
            )
        if not isinstance(raw, dict):
            raise ConfigurationError(f"{where} must be a dict, got {type(raw).__name__}.")
        unknown = set(raw) - _SCHEDULE_KEYS
        if unknown:
            raise ConfigurationError(
                f"{where} has unknown key(s) {', '.join(sorted(map(repr, unknown)))}. "
                f"Known: {', '.join(sorted(_SCHEDULE_KEYS))}."
            )
        for required in ("task", "cron"):
            if required not in raw:
                raise ConfigurationError(f"{where} needs a {required!r}.")
        task = raw["task"]
        if not isinstance(task, str) or not task:
            raise ConfigurationError(f"{where}['task'] must be a task name, got {task!r}.")
        try:
            cron = validate_cron(raw["cron"])
            tz = None if raw.get("tz") is None else validate_tz(raw["tz"])
        except CronError as exc:
            raise ConfigurationError(f"{where}: {exc}.") from None
        args = raw.get("args", [])
        if not isinstance(args, (list, tuple)):
            raise ConfigurationError(f"{where}['args'] must be a list, got {args!r}.")
        kwargs = raw.get("kwargs", {})
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise ConfigurationError(
                f"{where}['kwargs'] must be a dict with string keys, got {kwargs!r}."
            )
        queue = raw.get("queue")
        if queue is not None and not (isinstance(queue, str) and QUEUE_NAME_RE.match(queue)):
            raise ConfigurationError(f"{where}['queue'] is not a valid queue name: {queue!r}.")
        priority = raw.get("priority")
        if priority is not None and not (
            isinstance(priority, int)
            and not isinstance(priority, bool)
            and PRIORITY_MIN <= priority <= PRIORITY_MAX
        ):
            raise ConfigurationError(
                f"{where}['priority'] must be an integer from -100 to 100, got {priority!r}."
            )
        catch_up = raw.get("catch_up", True)
        if not isinstance(catch_up, bool):
            raise ConfigurationError(f"{where}['catch_up'] must be True or False.")
        entries.append(
            ScheduleEntry(
                name=name,
                task=task,
                cron=cron,
                tz=tz,
                args=list(args),
                kwargs=dict(kwargs),
                queue=queue,
                priority=priority,
                catch_up=catch_up,
            )
        )
    return tuple(entries)


def build_settings(raw: Any) -> QTasksSettings:
    """Validate a ``QTASKS`` dict and return the settings object."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigurationError(f"QTASKS must be a dict, got {type(raw).__name__}.")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or key != key.upper():
            raise ConfigurationError(f"QTASKS keys are upper-case strings; got {key!r}.")
        values[key.lower()] = _validate(key, value)
    result = QTasksSettings(**values)
    if result.queues is not None and result.default_queue not in result.queues:
        raise ConfigurationError(
            f"QTASKS['DEFAULT_QUEUE'] {result.default_queue!r} is not in QTASKS['QUEUES']."
        )
    if result.heartbeat_timeout < 2 * result.heartbeat_interval:
        raise ConfigurationError(
            "QTASKS['HEARTBEAT_TIMEOUT'] must be at least twice QTASKS['HEARTBEAT_INTERVAL'], "
            "or one late heartbeat would make a live worker look dead."
        )
    return result


def import_component(settings: QTasksSettings, key: str, base: type) -> Any:
    """The class a component key names, checked to be a subclass of ``base``."""
    path = getattr(settings, key)
    try:
        cls = import_string(path)
    except ImportError as exc:
        raise ConfigurationError(
            f"QTASKS[{key.upper()!r}] {path!r} cannot be imported: {exc}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigurationError(
            f"QTASKS[{key.upper()!r}] {path!r} is not a subclass of {base.__name__}."
        )
    return cls


@lru_cache(maxsize=1)
def get_settings() -> QTasksSettings:
    """The project's validated settings, read once per process (reset by override_settings)."""
    return build_settings(getattr(django_settings, "QTASKS", None))


@receiver(setting_changed)
def _reset(*, setting: str, **_: Any) -> None:
    if setting in {"QTASKS", "DATABASES"}:
        get_settings.cache_clear()
