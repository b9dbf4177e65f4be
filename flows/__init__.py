"""Prefect flows over the same stage functions that dvc.yaml runs (`tasks/<stage>.py:run`).

`pipeline` runs the DAG once, with each task cached on the same inputs DVC keys on
(`tasks/keys.py`); `python -m flows.pipeline [KEY=VALUE ...]` runs it from a shell.
"""
