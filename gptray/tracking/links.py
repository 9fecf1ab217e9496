"""Where a person looks at a run: MLflow UI addresses that open its model-training view, not the GenAI one."""

from __future__ import annotations

from urllib.parse import quote

# MLflow 3.x opens an experiment in its GenAI view (traces, sessions, judges) unless the address asks for the
# model-training one: the runs table, metrics charts, the Dataset column.
TRAINING_VIEW = "workflowType=machine_learning"
# Where `mlflow ui` serves when given no --host/--port: the address gptray points at for a local database.
LOCAL_UI = "http://127.0.0.1:5000"


def ui_url(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI address of an experiment's runs, or of one run, in the model-training view.

    An http(s) tracking URI is the server whose UI it is; any other store (a SQLite file) is browsed with
    `mlflow ui`, at its default address (ui_command says how to start it).
    """
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI
    page = f"#/experiments/{quote(str(experiment_id))}/runs"
    if run_id:
        page += f"/{quote(run_id)}"
    return f"{base}/{page}?{TRAINING_VIEW}"


def ui_command(tracking_uri: str) -> str | None:
    """The command that serves the UI of a store that is not a server (None for an http(s) tracking URI)."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def run_ui_url(tracking_uri: str, run_id: str, experiment_id: str | None = None) -> str | None:
    """ui_url of a run, looking its experiment up in the store when not given; None if the store cannot say."""
    if not experiment_id:
        from mlflow.tracking import MlflowClient

        try:
            experiment_id = MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
        except Exception:  # an address is a convenience: a store that cannot answer now gets none
            return None
    return ui_url(tracking_uri, experiment_id, run_id)
