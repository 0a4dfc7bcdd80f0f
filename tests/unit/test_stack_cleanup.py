"""scripts/stack.py leaves nothing in the system temp dir: the PostgreSQL dir it makes there (when
the PostgreSQL account cannot enter the stack's own dir) goes on ``stop`` and on ``down``, its log
kept under the stack's dir. No server is started: the dir is made as ``start`` makes it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from tests.support.distributed import stack_module


@pytest.fixture
def elsewhere(monkeypatch):
    """As root with a ``postgres`` account and a 0700 stack dir (pytest's): the PostgreSQL dir goes
    to the system temp dir. A uid that is not ours stands in for that account."""
    module = stack_module()
    monkeypatch.setattr(module, "pg_os_user", lambda: (os.getuid() + 4242, os.getgid()))
    return module


def _made(stack) -> Path:
    pg_dir = stack.pg_dir
    assert pg_dir.parent == Path(tempfile.gettempdir()).resolve() and pg_dir.name.startswith("tradeflow-pg-")
    assert (stack.base / "postgres").is_symlink() and stack.pg_dir == pg_dir  # made once, then found
    (pg_dir / "data").mkdir()
    (pg_dir / "postgres.log").write_text("database system is shut down\n")
    return pg_dir


def test_stop_removes_the_postgres_dir_made_in_the_temp_dir_and_keeps_its_log(elsewhere, tmp_path):
    base = tmp_path / "stack"
    base.mkdir(mode=0o700)
    stack = elsewhere.Stack(base)
    pg_dir = _made(stack)
    stack.stop()  # nothing started: the services are stopped as no-ops, then the dir goes
    assert not pg_dir.exists() and not (base / "postgres").exists()
    assert (base / "logs" / "postgres.log").read_text() == "database system is shut down\n"


def test_down_removes_it_too_when_the_launcher_is_gone(elsewhere, tmp_path):
    base = tmp_path / "stack"
    base.mkdir(mode=0o700)
    pg_dir = _made(elsewhere.Stack(base))
    (base / "stack.json").write_text(json.dumps({"launcher_pid": None, "pids": {}}))
    assert elsewhere.down(base / "stack.json") == 0
    assert not pg_dir.exists() and not (base / "postgres").exists() and not (base / "stack.json").exists()


def test_a_postgres_dir_inside_the_stack_dir_is_left_to_its_owner(tmp_path, monkeypatch):
    module = stack_module()
    monkeypatch.setattr(module, "pg_os_user", lambda: None)  # not root: PostgreSQL runs as us, in base
    stack = module.Stack(tmp_path / "stack")
    assert stack.pg_dir == (tmp_path / "stack" / "postgres").resolve()
    stack.pg_dir.mkdir(parents=True)
    stack.stop()
    assert stack.pg_dir.is_dir()
