"""The pipeline lifecycle through the SDK, against the real API: versions from edits, a promotion to production
that one lead requests and another approves, production keeping its version while development moves on."""

from __future__ import annotations

import pytest

from rime_client import Client, Forbidden
from tests.sdk.conftest import Served
from tests.sdk.test_client import unique, with_pipeline


def lead(admin: Client, api: Served, email: str) -> Client:
    user = admin.users.create(email, email.split("@")[0], "lead_data_engineer")
    return Client(api.url, admin.tokens.create(user.id, "sdk").token)


def test_versions_promotion_and_approval(api: Served):
    with Client(api.url, api.admin_token) as admin:
        project, pipeline = with_pipeline(admin, unique("lifecycle"))
        first, second = lead(admin, api, f"{unique('a')}@example.com"), lead(admin, api, f"{unique('b')}@example.com")
        admin.pipelines.update(pipeline.id, {"description": "v2"}, project=project.id)
        assert [v.version for v in admin.versions.list("nightly", project=project.name)] == [1, 2]
        assert admin.versions.diff("nightly", 1, 2, project=project.name).fields[0]["field"] == "description"

        with first, second:
            assert first.versions.promote("nightly", 2, project=project.name).environment == "qa"
            for target in ("uat", "production"):
                request = first.versions.promote("nightly", 2, project=project.name)
                assert request.status == "pending_approval" and request.approval_request_id
                with pytest.raises(Forbidden) as refused:
                    first.approvals.approve(request.approval_request_id, project=project.id)
                assert refused.value.status == 403 and refused.value.request_id
                second.approvals.comment(request.approval_request_id, "checked", project=project.id)
                approved = second.approvals.approve(request.approval_request_id, project=project.id, reason="ok")
                assert approved.status == "approved" and approved.to_environment == target
            assert second.approvals.pending().count == 0

            admin.pipelines.update(pipeline.id, {"description": "v3"}, project=project.id)
            environments = admin.versions.environments("nightly", project=project.name)
            assert environments["production"].version == 2 and environments["production"].live
            assert environments["development"].version == 3
            plan = admin.pipelines.plan("nightly", project=project.name, environment="production")
            assert plan.version == 2
            assert first.versions.retire("nightly", 2, project=project.name).status == "retired"
