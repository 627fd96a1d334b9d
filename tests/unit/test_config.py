"""The operator's configuration: flags, the environment variables they default from, errors."""

from __future__ import annotations

import pytest

from specdecode_operator.autotune.observe import Labels
from specdecode_operator.config import LeaderElection, OperatorConfig, parse


def test_defaults_without_flags_or_environment() -> None:
    cfg = parse([], {})
    assert cfg == OperatorConfig()
    assert cfg.scope == [None] and cfg.labels == Labels()
    assert (cfg.prometheus_url, cfg.prometheus_timeout, cfg.autotune_tick, cfg.resync_seconds,
            cfg.discovery_ttl) == ("", 5.0, 10.0, 60.0, 60.0)


def test_environment_variables_keep_their_names_and_flags_win() -> None:
    env = {
        "SPECDECODE_PROMETHEUS_URL": "http://prom:9090", "SPECDECODE_PROMETHEUS_TIMEOUT": "2",
        "SPECDECODE_AUTOTUNE_TICK": "1", "SPECDECODE_RESYNC_SECONDS": "10",
        "SPECDECODE_DISCOVERY_TTL": "0", "SPECDECODE_NAMESPACES": "a, b,,a",
        "SPECDECODE_PROM_LABEL_NAMESPACE": "kubernetes_namespace",
        "SPECDECODE_PROM_LABEL_SDD": "app", "SPECDECODE_PROM_LABEL_K": "k",
        "SPECDECODE_PROM_LABEL_POD": "pod_name", "SPECDECODE_METRICS_PORT": "9100",
        "KUBECONFIG": "/tmp/kc",
    }
    cfg = parse([], env)
    assert cfg.prometheus_url == "http://prom:9090" and cfg.prometheus_timeout == 2.0
    assert (cfg.autotune_tick, cfg.resync_seconds, cfg.discovery_ttl) == (1.0, 10.0, 0.0)
    assert cfg.namespaces == ("a", "b") and cfg.scope == ["a", "b"]
    assert cfg.labels == Labels(namespace="kubernetes_namespace", sdd="app", k="k",
                                pod="pod_name")
    assert cfg.metrics_port == 9100 and cfg.kubeconfig == "/tmp/kc"

    flags = parse(["-n", "c", "--namespace", "d", "--resync-seconds", "30",
                   "--prometheus-url", "", "--metrics-port=0", "-v"], env)
    assert flags.namespaces == ("c", "d")           # flags replace SPECDECODE_NAMESPACES
    assert flags.resync_seconds == 30.0 and flags.prometheus_url == ""
    assert flags.metrics_port == 0 and flags.verbose


def test_leader_election_settings_come_from_the_charts_variables_or_flags() -> None:
    assert parse([], {}).leader == LeaderElection()
    assert not LeaderElection().enabled
    env = {"SPECDECODE_LEADER_ELECTION": "1", "SPECDECODE_LEASE_NAME": "rel-op",
           "SPECDECODE_LEASE_NAMESPACE": "ops", "SPECDECODE_LEASE_SECONDS": "6",
           "SPECDECODE_LEASE_RETRY_SECONDS": "1", "SPECDECODE_POD_NAME": "op-7f9c-x2"}
    assert parse([], env).leader == LeaderElection(
        enabled=True, lease_name="rel-op", lease_namespace="ops", lease_seconds=6,
        retry_seconds=1.0, identity="op-7f9c-x2")
    flags = parse(["--leader-election=false", "--lease-seconds=30", "--leader-identity=b"], env)
    assert (flags.leader.enabled, flags.leader.lease_seconds, flags.leader.identity) == \
        (False, 30, "b")
    assert parse(["--leader-election", "true"], {}).leader.enabled


def test_the_obsolete_peering_flag_is_gone() -> None:
    with pytest.raises(SystemExit):
        parse(["--peering", "p"], {})


def test_the_configuration_is_frozen() -> None:
    cfg = parse([], {})
    with pytest.raises(AttributeError):
        cfg.resync_seconds = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(("argv", "env", "message"), [
    ([], {"SPECDECODE_RESYNC_SECONDS": "soon"},
     "environment variable SPECDECODE_RESYNC_SECONDS: not a number: 'soon'"),
    ([], {"SPECDECODE_AUTOTUNE_TICK": "0"},
     "environment variable SPECDECODE_AUTOTUNE_TICK: 0 must be greater than 0"),
    ([], {"SPECDECODE_DISCOVERY_TTL": "-1"}, "-1 must be at least 0"),
    (["--prometheus-timeout", "x"], {}, "argument --prometheus-timeout: not a number: 'x'"),
    (["--metrics-port", "70000"], {}, "70000 is not a port"),
    ([], {"SPECDECODE_LEADER_ELECTION": "maybe"},
     "environment variable SPECDECODE_LEADER_ELECTION: not true or false: 'maybe'"),
    (["--leader-election=true", "--lease-seconds=2"], {},
     "--lease-retry-seconds (2) must be less than --lease-seconds (2)"),
    ([], {"SPECDECODE_LEASE_SECONDS": "0"}, "SPECDECODE_LEASE_SECONDS: 0 must be at least 1"),
])
def test_bad_values_exit_with_the_setting_named(
    argv: list[str], env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        parse(argv, env)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
