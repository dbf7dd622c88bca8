"""The user's API: the app object (QueueTasks, AsyncQueueTasks), the task objects
``@app.task`` makes (SyncTask, AsyncTask, TaskCls, the Task snapshot), results, and flows
(chains and groups). Users import these names from ``django_qtasks`` itself."""
