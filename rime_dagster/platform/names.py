"""Names the API needs from the platform's own definitions (no Dagster import, so the API can use them)."""

HOUSEKEEPING_JOB = "rime_housekeeping"


def dagster_name(namespace: str, slug: str, *parts: str) -> str:
    """`demo__shop_nightly`: how a project's object (and its parts: `demo__shop_nightly__graph`) is named in Dagster.

    `namespace` is the project's and `slug` the object's, both fixed at creation (rime_dagster/store/slugs.py),
    so names are readable, searchable by project in the Dagster UI, and never move when an object is renamed.
    A project's slugs are unique among its connectors, dbt projects and pipelines, and never contain `__`.
    """
    return "__".join((namespace, slug, *parts))
