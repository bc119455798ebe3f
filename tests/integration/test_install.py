"""``warden.install(app)`` as a good neighbour: tags and fixed operation ids, no collision with the app's
own routes (an existing ``/metrics`` included, with the real prometheus-fastapi-instrumentator), internals
only behind the app's dependencies, and an app-bound warden per app. No ``from __future__ import
annotations``: FastAPI must see the routes' annotations as objects."""

from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from prometheus_fastapi_instrumentator import Instrumentator

import poolwarden
import poolwarden.fastapi as pwf
from poolwarden import ConfigError, Warden
from poolwarden.testing import FakeConnection, FakeConnector


def _warden(connector: FakeConnector | None = None) -> Warden:
    warden = Warden(environ={})
    warden.pool("db", connector=connector or FakeConnector(), check_after_idle=None)
    return warden


def _first_tag_id(route: APIRoute) -> str:
    """The official full-stack FastAPI template's generate_unique_id_function."""
    return f"{route.tags[0]}-{route.name}"


def test_install_survives_a_unique_id_function_that_reads_the_first_tag() -> None:
    """An app whose generate_unique_id_function reads route.tags[0] installs, and its OpenAPI lists the
    operator routes (when asked) with their fixed operation ids and the poolwarden tag."""
    app = FastAPI(generate_unique_id_function=_first_tag_id)
    _warden().install(app, metrics=True, stats=True, include_in_schema=True)
    ops = {path: spec["get"] for path, spec in app.openapi()["paths"].items()}
    assert {p: op["operationId"] for p, op in ops.items()} == {
        "/livez": "poolwarden_livez", "/readyz": "poolwarden_readyz", "/metrics": "poolwarden_metrics",
        "/poolwarden/stats": "poolwarden_stats", "/poolwarden/health": "poolwarden_health"}
    assert all(op["tags"] == ["poolwarden"] for op in ops.values())


def test_operator_routes_are_hidden_from_the_schema_by_default_and_take_custom_tags() -> None:
    """By default the routes are out of the OpenAPI schema; ``tags`` replaces the tag they carry."""
    app = FastAPI(generate_unique_id_function=_first_tag_id)
    _warden().install(app, metrics=False, tags=["ops"])
    assert app.openapi()["paths"] == {}
    tags = {r.path: r.tags for r in app.routes if isinstance(r, APIRoute)}
    assert tags == {"/livez": ["ops"], "/readyz": ["ops"]}


def test_an_existing_route_keeps_its_path() -> None:
    """A /livez the app already serves is left alone: poolwarden adds no second route there."""
    app = FastAPI()

    @app.get("/livez")
    async def own() -> dict[str, str]:
        return {"mine": "yes"}

    warden = _warden()
    warden.install(app, metrics=False)
    app.router.lifespan_context = warden.lifespan
    assert [r.path for r in app.routes if isinstance(r, APIRoute)].count("/livez") == 1
    with TestClient(app) as client:
        assert client.get("/livez").json() == {"mine": "yes"}
        assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize("order", ["instrumentator-first", "poolwarden-first"])
def test_pool_metrics_show_beside_prometheus_fastapi_instrumentator(order: str) -> None:
    """With the instrumentator's /metrics, one /metrics route serves both its HTTP metrics and the pool
    metrics, whichever was installed first."""
    warden = _warden()
    app = FastAPI(lifespan=warden.lifespan)

    @app.get("/hello")
    async def hello() -> str:
        return "hi"

    if order == "instrumentator-first":
        Instrumentator().instrument(app).expose(app)
        warden.install(app)
    else:
        warden.install(app)
        Instrumentator().instrument(app).expose(app)
    gets = [r for r in app.routes if getattr(r, "path", None) == "/metrics"]
    assert len(gets) == 1 if order == "instrumentator-first" else len(gets) == 2
    with TestClient(app) as client:
        client.get("/hello")
        text = client.get("/metrics").text
    assert 'handler="/hello"' in text  # the instrumentator's
    assert 'db_client_connection_max{db_client_connection_pool_name="db"} 10.0' in text  # ours
    assert text.count("# TYPE db_client_connection_max ") == 1


def test_a_new_warden_per_app_joins_the_default_registry_again_and_again() -> None:
    """A new app and warden per test, each beside an instrumentator, never registers a metric twice;
    only the open warden's pools are shown."""
    for _ in range(3):
        warden = _warden()
        app = FastAPI(lifespan=warden.lifespan)
        Instrumentator().instrument(app).expose(app)
        warden.install(app)
        with TestClient(app) as client:
            text = client.get("/metrics").text
        assert text.count('db_client_connection_max{db_client_connection_pool_name="db"}') == 1


def test_internals_are_not_served_to_anonymous_callers_by_default() -> None:
    """Without dependencies: no /poolwarden/stats or /poolwarden/health, and /readyz?verbose stays terse."""
    warden = _warden()
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, metrics=False)
    with TestClient(app) as client:
        assert client.get("/poolwarden/stats").status_code == 404
        assert client.get("/poolwarden/health").status_code == 404
        ready = client.get("/readyz?verbose")
        assert ready.status_code == 200
        assert "details" not in ready.json()["checks"]["db:connections"][0]


def _token(x_token: Annotated[str | None, Header()] = None) -> None:
    if x_token != "s3cret":
        raise HTTPException(401, "who are you?")


def test_internals_behind_the_apps_own_dependencies_and_probes_stay_open() -> None:
    """With ``dependencies``: stats and verbose health answer 401 without the token and 200 with it;
    /livez and /readyz answer anyone."""
    warden = _warden()
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, metrics=False, dependencies=[Depends(_token)])
    with TestClient(app) as client:
        for path in ("/poolwarden/stats", "/poolwarden/health"):
            assert client.get(path).status_code == 401
        assert client.get("/poolwarden/stats", headers={"x-token": "s3cret"}).json()["db"]["max_size"] == 10
        health = client.get("/poolwarden/health", headers={"x-token": "s3cret"}).json()
        assert health["checks"]["db:connections"][0]["details"]["max"] == 10
        assert client.get("/livez").status_code == 200
        assert client.get("/readyz").status_code == 200


def test_a_private_ops_app_serves_the_internals_to_anyone() -> None:
    """``stats=True`` (an app on a private port) serves the internals and /readyz?verbose without checks."""
    warden = _warden()
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, metrics=False, stats=True)
    with TestClient(app) as client:
        assert client.get("/poolwarden/stats").status_code == 200
        assert "details" in client.get("/readyz?verbose").json()["checks"]["db:connections"][0]


def test_probes_stay_open_in_an_app_whose_every_route_needs_credentials() -> None:
    """``FastAPI(dependencies=[auth])`` guards the app's routes and /metrics, never /livez and /readyz."""
    warden = _warden()
    app = FastAPI(lifespan=warden.lifespan, dependencies=[Depends(_token)])

    @app.get("/mine")
    async def mine() -> str:
        return "ok"

    warden.install(app, metrics=True)
    with TestClient(app) as client:
        assert client.get("/livez").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/metrics").status_code == 401
        assert client.get("/mine").status_code == 401
        assert client.get("/mine", headers={"x-token": "s3cret"}).status_code == 200
    assert app.router.dependencies  # left as it was


def test_an_ops_app_on_a_private_port_shows_the_service_pools() -> None:
    """The README's split: the service app serves no internals; an ops app without a lifespan of its own,
    bound to the same warden with ``stats=True``, shows the pools the service opened."""
    warden = _warden()
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app)
    ops = FastAPI()
    warden.install(ops, stats=True, metrics=False)
    with TestClient(app) as service, TestClient(ops) as private:
        assert service.get("/poolwarden/stats").status_code == 404
        stats = private.get("/poolwarden/stats").json()
        assert stats["db"]["state"] == "open"
        assert private.get("/poolwarden/health").json()["checks"]["db:connections"][0]["status"] == "pass"


def test_livez_never_touches_a_backend() -> None:
    """/livez answers 200 while the backend refuses every connect, and makes no connect or ping."""
    connector = FakeConnector(fail_connects=-1)
    warden = Warden(environ={})
    warden.pool("db", connector=connector, startup="lazy", check_after_idle=None, backoff_initial=5,
                backoff_max=10, failure_threshold=1)
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, metrics=False)
    with TestClient(app) as client:
        before = (connector.connects, connector.pings)
        assert [client.get("/livez").status_code for _ in range(20)] == [200] * 20
        assert (connector.connects, connector.pings) == before
        assert client.get("/readyz").status_code == 503


# -- a warden per app ------------------------------------------------------------------------------

# Written before any warden exists, as a router module of an app factory would be.
router = APIRouter()
Conn = Annotated[FakeConnection, pwf.connection("db")]
Tx = Annotated[FakeConnection, pwf.transaction("db")]


@router.get("/which")
async def which(conn: Conn) -> dict[str, Any]:
    await conn.execute("SELECT 1")
    return {"connector": id(conn.connector)}


@router.post("/tx")
async def tx(conn: Tx) -> dict[str, bool]:
    return {"in_tx": conn.in_tx}


def create_app(connector: FakeConnector) -> FastAPI:
    warden = _warden(connector)
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, metrics=False)
    app.include_router(router)
    return app


@pytest.mark.parametrize("run", range(3))
def test_each_app_lends_from_its_own_warden(run: int) -> None:
    """Two apps built by one factory from one router each lend from their own warden's pool."""
    first, second = FakeConnector(), FakeConnector()
    with TestClient(create_app(first)) as a, TestClient(create_app(second)) as b:
        assert a.get("/which").json() == {"connector": id(first)}
        assert b.get("/which").json() == {"connector": id(second)}
        assert a.post("/tx").json() == {"in_tx": True}
    assert first.open_connections == second.open_connections == []


def test_an_app_without_a_bound_warden_is_a_clear_config_error() -> None:
    """A route using the app-bound dependency in an app no warden was installed on fails naming the fix."""
    app = FastAPI()
    app.include_router(router)
    with TestClient(app, raise_server_exceptions=True) as client, \
            pytest.raises(ConfigError, match=r"warden.install\(app\)"):
        client.get("/which")


def test_an_app_is_bound_to_one_warden() -> None:
    """Installing a second warden on the same app is refused rather than silently rebinding it."""
    app = FastAPI()
    _warden().install(app, metrics=False)
    with pytest.raises(ConfigError, match="another warden"):
        _warden().install(app, metrics=False)


# -- overrides -------------------------------------------------------------------------------------


def test_each_dependency_is_one_stable_key() -> None:
    """``db.depends(...)`` returns the same object for the same arguments, and so do the app-bound ones."""
    db = _warden()["db"]
    assert db.connection is db.connection is db.depends()
    assert db.transaction is db.depends(transaction=True)
    assert db.depends(release="response") is db.depends(release="response")
    assert db.depends(release="response") is not db.connection
    assert pwf.connection("db") is pwf.depends("db")
    with pytest.raises(ConfigError, match="release"):
        db.depends(release="later")  # type: ignore[arg-type]


def test_override_replaces_every_dependency_of_the_pool_and_undoes() -> None:
    """``db.override(app, fake)`` replaces the resource-bound and app-bound dependencies, the transaction
    ones with ``transaction=`` when given, and leaving the ``with`` block restores the real pool."""
    warden = _warden()
    db = warden["db"]
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, metrics=False)
    app.include_router(router)

    @app.get("/own")
    async def own(conn: Annotated[Any, db.connection], late: Annotated[Any, db.depends(release="response")]
                  ) -> list[str]:
        return [repr(conn), repr(late)]

    elsewhere = FakeConnector()
    plain, in_tx = FakeConnection(elsewhere, 1), FakeConnection(elsewhere, 2)
    in_tx.in_tx = True
    with TestClient(app) as client:
        with db.override(app, lambda: plain, transaction=lambda: in_tx):
            before = db.stats().acquired
            assert client.get("/own").json() == ["<FakeConnection 1>", "<FakeConnection 1>"]
            assert client.get("/which").json() == {"connector": id(elsewhere)}
            assert client.post("/tx").json() == {"in_tx": True}
            assert db.stats().acquired == before
        assert app.dependency_overrides == {}
        assert client.get("/which").json() == {"connector": id(db.connector)}


def test_connection_class_types_the_pool_and_is_checked() -> None:
    """``connection_class`` must be what the URL's driver lends (or a base of it): else a ConfigError
    naming both classes."""
    warden = Warden(environ={})
    ok = warden.pool("db", "sqlite:///:memory:", connection_class=object)
    assert ok.name == "db"
    with pytest.raises(ConfigError, match=r"lends aiosqlite\..*Connection.*not .*FakeConnection"):
        warden.pool("other", "sqlite:///:memory:", connection_class=FakeConnection)


def test_otel_exporter_is_reachable_as_written_in_the_readme() -> None:
    """``poolwarden.observe.otel.instrument(warden)`` works after a plain ``import poolwarden``."""
    poolwarden.observe.otel.instrument(_warden())


def test_a_mounted_sub_application_is_bound_on_its_own() -> None:
    """A mounted FastAPI sub-application serves its own requests: bind() it to the warden, and its
    app-bound dependencies lend from that warden's pools."""
    connector = FakeConnector()
    warden = _warden(connector)
    app = FastAPI(lifespan=warden.lifespan)
    warden.install(app, metrics=False)
    sub = FastAPI()
    sub.include_router(router)
    app.mount("/v1", sub)
    with TestClient(app) as client:
        with pytest.raises(ConfigError, match="no warden is bound"):
            client.get("/v1/which")
        pwf.bind(warden, sub)
        assert client.get("/v1/which").json() == {"connector": id(connector)}
