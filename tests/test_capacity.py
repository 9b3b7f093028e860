"""The connection-budget planner's arithmetic, its live mode, cloudbuild.yaml's agreement with
it, and the startup budget warning."""

from __future__ import annotations

import json

import pytest
import yaml

from devtools import plan as capacity
from lib.postgres.capacity import Plan
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("args", "available", "per_instance", "max_instances"),
    [
        ((25, 3, 2, 1, 5, 0, 2.0), 20, 5, 2),  # db-f1-micro, the cloudbuild.yaml defaults
        ((100, 3, 0, 2, 5, 2, 2.0), 97, 14, 3),  # 97 // 28
        ((100, 3, 10, 1, 5, 0, 1.0), 87, 5, 17),  # no overshoot (not Cloud Run)
        ((10, 3, 0, 1, 5, 0, 2.0), 7, 5, 0),  # not even one instance fits
        ((5, 3, 4, 1, 5, 0, 2.0), -2, 5, 0),
    ],
)
def test_plan_arithmetic(args, available, per_instance, max_instances):
    plan = Plan(*args)
    assert (plan.available, plan.per_instance, plan.max_instances) == (
        available,
        per_instance,
        max_instances,
    )
    assert plan.max_instances * plan.per_instance * plan.overshoot <= max(plan.available, 0)
    assert (plan.max_instances + 1) * plan.per_instance * plan.overshoot > plan.available


def test_command_shows_the_arithmetic_and_the_flags(capsys):
    assert capacity.main(["--max-connections", "25", "--reserved", "3", "--other", "2"]) == 0
    out = capsys.readouterr().out
    assert "available   = max_connections 25 - reserved 3 - other clients 2 = 20" in out
    assert "max instances = floor(20 / (5 x overshoot 2)) = 2" in out
    assert "--max-instances=2 --concurrency=5" in out and "THREADS=5" in out


def test_command_refuses_a_fleet_that_cannot_fit(capsys):
    assert capacity.main(["--max-connections", "10", "--pool-size", "5"]) == 1
    assert "does not fit" in capsys.readouterr().out


def test_command_reads_the_server_live(postgres, capsys):
    assert capacity.main(["--url", postgres.admin_url]) == 0
    out = capsys.readouterr().out
    assert "max_connections 100 - reserved 3" in out


def test_cloudbuild_uses_the_planners_numbers():
    subs = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())["substitutions"]
    plan = Plan(25, 3, 2, 1, int(subs["_POOL_SIZE"]), 0, capacity.OVERSHOOT)
    assert int(subs["_MAX_INSTANCES"]) == plan.max_instances
    assert int(subs["_CONCURRENCY"]) == plan.threads


def warnings(out: str) -> list[dict]:
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [line for line in lines if "connection budget" in line.get("message", "")]


def test_startup_warns_once_when_the_fleet_cannot_fit(admin, make_app, capsys):
    client = make_app(FLEET_MAX_INSTANCES="100").test_client()  # 100 x 2 x 5 > 97
    capsys.readouterr()
    for _ in range(3):
        client.get("/")
    [warning] = warnings(capsys.readouterr().out)
    assert warning["severity"] == "WARNING"
    assert warning["budget"] == {
        "available": warning["budget"]["available"],
        "per_instance": 5,
        "max_instances": warning["budget"]["available"] // 10,
    }
    assert "100 instances" in warning["message"]


def test_no_warning_when_the_fleet_fits(admin, make_app, capsys):
    client = make_app(FLEET_MAX_INSTANCES="2").test_client()
    capsys.readouterr()
    client.get("/")
    assert warnings(capsys.readouterr().out) == []


def test_command_spreads_the_fleet_over_replicas_without_raising_it(capsys):
    """Three instances (a primary and two replicas, or three read-pool nodes): the peak is
    spread, but the bound is what one instance takes when the others are down."""
    args = ["--max-connections", "25", "--reserved", "3", "--other", "2"]
    assert capacity.main([*args, "--instances", "3"]) == 0
    out = capsys.readouterr().out
    assert "max instances = floor(20 / (5 x overshoot 2)) = 2" in out  # unchanged
    assert "spread over 3 database instances: about 7 connections each" in out
    assert "each must admit all 20 when the others are down" in out
