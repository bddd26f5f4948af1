"""Entry point of the ``tessera`` command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from tessera import __version__
from tessera.cli import admin, data, elastic, jobs, local, queues, serve, sim, tokens, top
from tessera.cli.output import fail, out

app = typer.Typer(
    name="tessera",
    help="Tessera: GPU-sharing AI jobs. Submit, list, inspect and cancel jobs on GPU slices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
elastic.register(jobs.submit_app)
jobs.register(app)
data.register(app)
app.add_typer(serve.serve_app, name="serve")
app.add_typer(queues.queue_app, name="queue")
app.add_typer(sim.sim_app, name="sim")
app.add_typer(top.top_app, name="top")
app.add_typer(admin.admin_app, name="admin")
app.add_typer(tokens.token_app, name="token")
app.command("node")(local.node)
app.command("down")(local.down)


@app.command()
def version(
    server: Annotated[bool, typer.Option(help="Also ask the control plane its version.")] = False,
) -> None:
    """Print the client's (and optionally the server's) version."""
    out.print(f"tessera {__version__}", highlight=False)
    if server:
        from tessera.cli.output import server_errors
        from tessera.client import Client

        with server_errors(), Client() as client:
            out.print(f"server {client.version()['version']} at {client.config.url}", highlight=False)


@app.command()
def up(
    host: Annotated[
        str, typer.Option(envvar="TESSERA_HOST", help="Address to listen on (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(envvar="TESSERA_PORT", min=1, max=65535, help="Port to listen on.")
    ] = 8470,
    simulate_gpus: Annotated[
        str | None,
        typer.Option(
            envvar="TESSERA_SIMULATE_GPUS", help="Simulated GPUs for this machine's node, e.g. 2xA100-80GB."
        ),
    ] = None,
    home: Annotated[Path | None, typer.Option(envvar="TESSERA_HOME", help="State directory.")] = None,
    agent: Annotated[bool, typer.Option(help="Start (or reuse) this machine's node agent, detached.")] = True,
    gateway: Annotated[
        bool, typer.Option(help="Start (or reuse) this machine's serving gateway, detached.")
    ] = True,
    gateway_port: Annotated[
        int, typer.Option(envvar="TESSERA_GATEWAY_PORT", min=0, max=65535, help="Its port (0: a free one).")
    ] = 0,
    database_url: Annotated[
        str | None,
        typer.Option(envvar="TESSERA_DATABASE_URL", help="SQLAlchemy URL; SQLite under home by default."),
    ] = None,
) -> None:
    """Run the control plane in the foreground (API, controllers) with embedded defaults."""
    import uvicorn
    from pydantic import ValidationError

    from tessera.platform.app import create_app, public_url
    from tessera.platform.settings import Settings

    overrides: dict[str, object] = {
        "host": host,
        "port": port,
        "start_agent": agent,
        "start_gateway": gateway,
        "gateway_port": gateway_port,
    }
    for key, value in (("simulate_gpus", simulate_gpus), ("home", home), ("database_url", database_url)):
        if value is not None:
            overrides[key] = value
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()
        )
        fail(problems, code=2)
    url = public_url(settings)
    out.print(
        f"Tessera {__version__} control plane at [bold]{url}[/bold] (state in {settings.home})",
        highlight=False,
    )
    if settings.simulate_gpus:
        out.print(
            f"simulated GPUs for this node: {settings.simulate_gpus} (labelled simulated)", highlight=False
        )
    out.print(
        "From a second terminal:\n"
        f"  export TESSERA_HOME={settings.home}\n"
        "  .venv/bin/tessera submit train --name hello --gpu-memory 4Gi --gpu-compute 30 "
        "-- python examples/hello_train.py\n"
        "  .venv/bin/tessera list ; .venv/bin/tessera get hello ; .venv/bin/tessera logs -f hello\n"
        "  .venv/bin/tessera serve custom --name echo --min-replicas 0 --max-replicas 2 --public "
        "--readiness-path /ready -- python examples/model_server.py\n"
        "  .venv/bin/tessera serve get echo   # its url at the gateway\n"
        "  .venv/bin/tessera down   # stops the agent, the gateway and this control plane\n"
        f"The CLI reads its token from {settings.credentials_path} (written on first start).",
        highlight=False,
    )
    # the control plane's own log lines (controllers, backends) beside uvicorn's
    tessera_log = logging.getLogger("tessera")
    if not tessera_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        tessera_log.addHandler(handler)
        tessera_log.setLevel(logging.INFO)
    # open watches and log follows never end by themselves: give them 5 s, not `tessera down`'s grace
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        timeout_graceful_shutdown=5,
    )


@app.command("gateway")
def gateway_cmd(
    url: Annotated[str | None, typer.Option(envvar="TESSERA_URL", help="The control plane's URL.")] = None,
    token_file: Annotated[Path | None, typer.Option(help="File holding a gateway-scope token.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: a free one).")] = 8480,
    name: Annotated[str, typer.Option(help="This gateway's name (several may run).")] = "gateway",
    advertise_url: Annotated[str | None, typer.Option(help="The URL clients use, if not host:port.")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between traffic reports.")] = 1.0,
) -> None:
    """Run a serving gateway in the foreground: routes /serve/NAME/ to ready replicas."""
    import os

    from tessera.client.config import resolve
    from tessera.gateway.main import run

    token = os.environ.get("TESSERA_GATEWAY_TOKEN")
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            fail(f"--token-file: cannot read {token_file}: {exc}", code=2)
    if not token:
        fail("a gateway-scope token is needed: --token-file or TESSERA_GATEWAY_TOKEN", code=2)
    run(
        resolve(url, token).url,
        token,
        host=host,
        port=port,
        name=name,
        advertise_url=advertise_url,
        interval=interval,
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
