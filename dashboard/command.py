"""``ctower dashboard``: Streamlit on 127.0.0.1 with the page of this package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

PAGE = Path(__file__).with_name("app.py")


def streamlit_command(port: int, headless: bool = True) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(PAGE),
        "--server.address", "127.0.0.1",
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
    click.echo(f"dashboard: http://127.0.0.1:{settings.dashboard_port}")
    env = dict(os.environ, PYTHONSAFEPATH="1")
    raise SystemExit(subprocess.call(streamlit_command(settings.dashboard_port), env=env))
