"""Pipeline DAG validation: ids, dependencies, per-type configs, cycles, order, skip propagation."""

import pytest

from rime_dagster.pipelines.spec import DagError, StepBody, dag_of, downstream_of, validate_dag


def step(id, type="pipeline", depends_on=(), **config):
    config = config or {"pipeline_id": "pipe_x"}
    return StepBody(id=id, type=type, config=config, depends_on=list(depends_on))


def test_order_is_topological_and_follows_body_order_on_ties():
    steps = [
        step("mart", depends_on=["stg_b", "stg_a"]),
        step("sync"),
        step("stg_b", depends_on=["sync"]),
        step("stg_a", depends_on=["sync"]),
    ]
    assert validate_dag(steps) == ["sync", "stg_b", "stg_a", "mart"]
    assert dag_of(steps)["edges"] == [
        {"from": "stg_b", "to": "mart"},
        {"from": "stg_a", "to": "mart"},
        {"from": "sync", "to": "stg_b"},
        {"from": "sync", "to": "stg_a"},
    ]


@pytest.mark.parametrize(
    ("steps", "offender", "words"),
    [
        ([step("a", depends_on=["b"]), step("b", depends_on=["a"])], "a", "cycle"),
        ([step("a", depends_on=["a"])], "a", "itself"),
        ([step("a"), step("b", depends_on=["nope"])], "b", "unknown step 'nope'"),
        ([step("a"), step("a")], "a", "used twice"),
        ([step("1bad")], "1bad", "must start with a letter"),
        ([step("a"), step("b", depends_on=["a", "a"])], "b", "twice"),
        ([step("s", type="connector_sync", table="x")], "s", "connector_id"),
        ([step("m", type="table_maintenance", table="t", operation="vacuum")], "m", "operation"),
        ([step("d", type="dbt", dbt_project_id="dbt_1", colour="red")], "d", "unknown field"),
    ],
)
def test_invalid_graphs_name_the_offending_step(steps, offender, words):
    with pytest.raises(DagError) as raised:
        validate_dag(steps)
    assert raised.value.step == offender
    assert words in str(raised.value)


def test_long_cycle_is_reported_with_its_path():
    steps = [step("a", depends_on=["c"]), step("b", depends_on=["a"]), step("c", depends_on=["b"]), step("d")]
    with pytest.raises(DagError, match=r"cycle: .+ -> .+ -> .+ -> "):
        validate_dag(steps)


def test_empty_pipeline_is_refused():
    with pytest.raises(DagError, match="at least one step"):
        validate_dag([])


def test_failure_skips_everything_downstream():
    steps = [
        step("sync"),
        step("dbt", depends_on=["sync"]),
        step("report", depends_on=["dbt"]),
        step("other"),
    ]
    assert downstream_of(steps, {"sync"}) == {"dbt", "report"}
    assert downstream_of(steps, {"other"}) == set()
