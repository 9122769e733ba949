"""``ctower dashboard``: Streamlit on 127.0.0.1 with the page of this package."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

PAGE = Path(__file__).resolve().with_name("app.py")


def streamlit_command(host: str, port: int, headless: bool = True) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(PAGE),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true" if headless else "false",
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
    ]


@click.command()
def dashboard() -> None:
    """Serve the control-tower dashboard."""
    from ctower.cli import settings_or_exit

    settings = settings_or_exit()
    click.echo(f"dashboard: http://{settings.dashboard_host}:{settings.dashboard_port}")
    env = dict(os.environ, PYTHONSAFEPATH="1")
    command = streamlit_command(settings.dashboard_host, settings.dashboard_port)
    # become Streamlit: whoever stops this process (demo, compose, systemd) stops the server
    os.execve(command[0], command, env)
