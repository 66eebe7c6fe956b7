"""rime_client: the Python SDK of the Rime API, a client over HTTP (it imports nothing of the server).

from rime_client import Client
with Client("http://127.0.0.1:8000", token=TOKEN) as client:
    finished = client.pipelines.run("nightly", project="analytics").wait(timeout=300)
    print(finished.status, [(s.step_id, s.status) for s in finished.steps])
"""

from rime_client.client import Client
from rime_client.errors import (
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    RequestInProgress,
    RimeError,
    ServiceUnavailable,
    Unauthorized,
    Unprocessable,
    ValidationError,
)
from rime_client.models import (
    Connector,
    ConnectorRun,
    Pipeline,
    PipelineRun,
    PipelineRunPlan,
    Project,
    RunStarted,
    StepRun,
)
from rime_client.runs import RunHandle

__all__ = [
    "Client",
    "Conflict",
    "Connector",
    "ConnectorRun",
    "Forbidden",
    "NotFound",
    "Pipeline",
    "PipelineRun",
    "PipelineRunPlan",
    "Project",
    "RateLimited",
    "RequestInProgress",
    "RimeError",
    "RunHandle",
    "RunStarted",
    "ServiceUnavailable",
    "StepRun",
    "Unauthorized",
    "Unprocessable",
    "ValidationError",
]
