"""A Kubeflow Pipelines API server on 127.0.0.1 for tests: the v2beta1 REST endpoints that the real kfp.Client
calls to submit a run, and a record of every request it got.

What `kfp.Client(host).create_run_from_pipeline_package(...)` sends (kfp/client/client.py, kfp_server_api):

* GET  /apis/v2beta1/healthz       from the constructor when no namespace is set (multi_user decides whether
                                   the client reads its namespace from the pod's service account);
* GET  /apis/v2beta1/experiments   ?filter=<JSON predicates on display_name>&namespace=...: one by that name?
* POST /apis/v2beta1/experiments   {display_name, namespace}, when there was none;
* POST /apis/v2beta1/runs          {experiment_id, display_name, pipeline_spec, runtime_config: {parameters}}.

Anything else is answered 404, as the real server does for an unknown path, and stays in the record. With
`status=` every request is answered with that HTTP status and a KFP-style error body.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API = "/apis/v2beta1"
# what kfp.Client reads from the environment besides its arguments and ~/.config/kfp/context.json: tests unset them
CLIENT_ENV = ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
              "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME", "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID",
              "KF_PIPELINES_APP_OAUTH2_CLIENT_ID", "KF_PIPELINES_APP_OAUTH2_CLIENT_SECRET")
EQUALS = (1, "EQUALS")  # the filter operation, as the client's _FILTER_OPERATIONS numbers it, or by name


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any  # the decoded JSON body, None without one


@dataclass
class KfpApiServer:
    """Start with `with KfpApiServer() as server:`; `server.url` is the host to give kfp.Client."""

    status: int | None = None  # answer everything with this HTTP status
    multi_user: bool = False
    requests: list[Request] = field(default_factory=list)
    experiments: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- what the tests read -------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._httpd is not None, "not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests]

    def run_request(self) -> dict[str, Any]:
        """The body of the one POST /runs."""
        posted = [r.body for r in self.requests if (r.method, r.path) == ("POST", f"{API}/runs")]
        assert len(posted) == 1, self.calls()
        return posted[0]

    # --- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> KfpApiServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="kfp-api-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    # --- the endpoints -----------------------------------------------------------------------------

    def answer(self, request: Request) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(request)
            if self.status is not None:
                return self.status, _error(self.status, "the test server fails every request")
            route = (request.method, request.path)
            if route == ("GET", f"{API}/healthz"):
                return 200, {"multi_user": self.multi_user, "pipeline_store": "database"}
            if route == ("GET", f"{API}/experiments"):
                return 200, self._list_experiments(request.query)
            if route == ("POST", f"{API}/experiments"):
                return self._create_experiment(request.body)
            if route == ("POST", f"{API}/runs"):
                return self._create_run(request.body)
            return 404, _error(404, f"Not Found: {request.method} {request.path}")

    def _list_experiments(self, query: dict[str, str]) -> dict[str, Any]:
        predicates = json.loads(query["filter"]).get("predicates", []) if query.get("filter") else []
        namespace = query.get("namespace")
        found = [e for e in self.experiments
                 if all(p["operation"] in EQUALS and e.get(p["key"]) == p.get("stringValue") for p in predicates)
                 and (not namespace or e.get("namespace") == namespace)]
        # protobuf's JSON leaves empty fields out
        return {"experiments": found, "total_size": len(found)} if found else {}

    def _create_experiment(self, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict) or not body.get("display_name"):
            return 400, _error(400, "Invalid input error: Experiment name is empty")
        experiment = {**body, "experiment_id": str(uuid.uuid4()), "created_at": "2026-01-01T00:00:00Z",
                      "storage_state": "AVAILABLE"}
        self.experiments.append(experiment)
        return 200, experiment

    def _create_run(self, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict) or not body.get("pipeline_spec"):
            return 400, _error(400, "Invalid input error: a run needs a pipeline spec")
        if body.get("experiment_id") not in {e["experiment_id"] for e in self.experiments}:
            return 404, _error(404, f"Experiment {body.get('experiment_id')} not found")
        run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING", "storage_state": "AVAILABLE",
               "created_at": "2026-01-01T00:00:00Z"}
        self.runs.append(run)
        return 200, run


def _error(status: int, message: str) -> dict[str, Any]:
    code = {400: 3, 404: 5}.get(status, 13)  # google.rpc codes: INVALID_ARGUMENT, NOT_FOUND, INTERNAL
    return {"error": message, "code": code, "message": message, "details": []}


def _handler(server: KfpApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            status, doc = server.answer(Request(self.command, url.path, query, body))
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:  # the record replaces the access log
            pass

    return Handler
