"""The scaling simulator: its model's conclusions and its command line."""

from __future__ import annotations

import json

import pytest

from bench import scaling


@pytest.fixture(scope="module")
def results():
    return {(r.scenario, r.policy): r for r in scaling.run_all(scaling.WORKLOADS, scaling.POLICIES, scaling.Params())}


def test_seed_strands_a_backlog_below_its_low_alarm(results):
    seed = results["burst-4", "seed"]

    assert (seed.stranded, seed.drain_seconds, seed.jobs_submitted) == (4, None, 0)


def test_proportional_strands_nothing(results):
    for scenario in scaling.WORKLOADS:
        assert results[scenario, "proportional"].stranded == 0, scenario


@pytest.mark.parametrize("scenario", list(scaling.WORKLOADS))
def test_oracle_is_a_lower_bound_for_drain_and_waits(results, scenario):
    oracle = results[scenario, "oracle"]
    for policy in ("seed", "proportional"):
        other = results[scenario, policy]
        if other.drain_seconds is not None:
            assert oracle.drain_seconds <= other.drain_seconds, policy
        if other.p95_wait_seconds is not None:
            assert oracle.p95_wait_seconds <= other.p95_wait_seconds, policy
            assert oracle.p50_wait_seconds <= other.p50_wait_seconds, policy


def test_every_task_is_accounted_for(results):
    for (scenario, policy), result in results.items():
        busy_tasks = result.busy_seconds / scaling.TASK_SECONDS
        assert busy_tasks + result.stranded == result.tasks, (scenario, policy)


def test_no_policy_runs_more_workers_than_the_compute_environment_holds(results):
    for result in results.values():
        assert result.peak_workers <= scaling.Params().max_workers


def test_proportional_meets_the_issue_targets_in_the_model(results):
    checks = scaling.targets(list(results.values()), scaling.Params())

    assert len(checks) == 5
    assert [name for name, met, _ in checks if not met] == []


def test_messages_per_worker_sizes_the_response():
    # The proportional policy calls the real scaler policy: a larger acceptable backlog per worker
    # means fewer workers for the same burst (20 from the scaler for 1000 / 50, plus the rules' 11
    # and one from the age alarm).
    wide = scaling.simulate("burst-1000x30s", "proportional", scaling.Params(messages_per_worker=50))

    assert wide.peak_workers == 32
    assert wide.drain_seconds > scaling.simulate("burst-1000x30s", "proportional").drain_seconds


def test_is_deterministic():
    first = [r.row() for r in scaling.run_all(["ramp"], scaling.POLICIES, scaling.Params())]
    second = [r.row() for r in scaling.run_all(["ramp"], scaling.POLICIES, scaling.Params())]

    assert first == second


def test_json_rows_carry_the_documented_keys(capsys):
    assert scaling.main(["--json"]) == 0

    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(scaling.WORKLOADS) * len(scaling.POLICIES)
    for row in rows:
        assert {"scenario", "policy", "drain_seconds", "p95_wait_seconds", "worker_seconds", "peak_workers",
                "stranded"} <= row.keys()


def test_table_names_every_scenario_and_the_targets(capsys):
    assert scaling.main([]) == 0

    out = capsys.readouterr().out
    for scenario in scaling.WORKLOADS:
        assert scenario in out
    assert "NOT MET" not in out
    assert out.count("met  ") == 5


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "burst.png"

    assert scaling.main(["--scenario", "burst-4", "--plot", str(path)]) == 0

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rejects_invalid_messages_per_worker(capsys):
    with pytest.raises(SystemExit) as exit_info:
        scaling.main(["--messages-per-worker", "0"])

    assert exit_info.value.code == 2
    assert "--messages-per-worker must be a whole number >= 1, got '0'" in capsys.readouterr().err
