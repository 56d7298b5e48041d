"""Remove and rotate: workflows too, so they get the same authorization, idempotency and audit."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.resources import RemoveInput
    from models.errors import ErrorCode
    from models.provider import Resource
    from models.provisioning import (
        IssuedCredential,
        MintInput,
        RemoveRequest,
        ResourceActionResult,
        ResourceRef,
        RevokeCredentialInput,
        RotateRequest,
    )
    from models.renewal import RenewalTarget
    from models.session import Authorization, AuthorizationRequest, RecordCredential
    from workflows.audit_trail import AuditTrail
    from workflows.provision import CALL, Stop, stop_from
    from workflows.search_attributes import QM_AGENT, QM_PRINCIPAL, QM_PROVIDER, QM_RESOURCE, QM_SERVICE
    from workflows.workflow_input import parse_input, raw_str

UNTIL_DONE: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(maximum_interval=timedelta(minutes=1)),
}


async def _authorize(actor: object, service_id: str, action: str, request_id: str) -> Authorization:
    auth: Authorization = await workflow.execute_activity(
        "authorize_actor",
        AuthorizationRequest(
            actor=actor, service_id=service_id, amount=None, action=action, request_id=request_id
        ),
        result_type=Authorization,
        summary=f"authorize {action}",
        **CALL,
    )
    return auth


def _tag(auth: Authorization, service_id: str, resource_id: str) -> None:
    workflow.upsert_search_attributes(
        [
            QM_PRINCIPAL.value_set(auth.principal_id),
            QM_PROVIDER.value_set(service_id.split("/", 1)[0]),
            QM_SERVICE.value_set(service_id),
            QM_RESOURCE.value_set(resource_id),
            QM_AGENT.value_set(auth.agent_chain[-1] if auth.agent_chain else "unknown"),
        ]
    )


def _trail(auth: Authorization, service_id: str, resource_id: str) -> AuditTrail:
    return AuditTrail(
        workflow_id=workflow.info().workflow_id,
        principal_id=auth.principal_id,
        agent_chain=auth.agent_chain,
        session_ids=auth.session_ids,
        provider=service_id.split("/", 1)[0],
        service_id=service_id,
        resource_id=resource_id,
    )


async def _begin(
    actor: object, service_id: str, resource_id: str, action: str, request_id: str
) -> tuple[Authorization, AuditTrail, ResourceRef] | ResourceActionResult:
    """Authorize, tag, audit the decision; a refusal comes back as the workflow's result.
    `request_id` is what a human actor's proof names (remove: the resource id)."""
    auth = await _authorize(actor, service_id, action, request_id)
    _tag(auth, service_id, resource_id)
    trail = _trail(auth, service_id, resource_id)
    await trail.record(
        "authorization.decided", outcome="success" if auth.allowed else "refused", reason=auth.reason
    )
    if not auth.allowed:
        await trail.flush()
        return ResourceActionResult(
            resource_id=resource_id, outcome="rejected", error_code=auth.code, error_message=auth.reason
        )
    ref = ResourceRef(
        principal_id=auth.principal_id, provider=service_id.split("/", 1)[0], resource_id=resource_id
    )
    return auth, trail, ref


def _invalid(raw: Any, message: str) -> ResourceActionResult:
    return ResourceActionResult(
        resource_id=raw_str(raw, "resource_id"),
        outcome="rejected",
        error_code=ErrorCode.INVALID_REQUEST,
        error_message=message,
    )


@workflow.defn(name="RemoveResourceWorkflow")
class RemoveResourceWorkflow:
    @workflow.run
    async def run(self, raw: Any) -> ResourceActionResult:
        """`raw` is the RemoveRequest as JSON: validated here, so bad input ends the workflow."""
        req = parse_input(RemoveRequest, raw)
        if isinstance(req, str):
            return _invalid(raw, req)
        wid = workflow.info().workflow_id
        begun = await _begin(req.actor, req.service_id, req.resource_id, "remove", req.resource_id)
        if isinstance(begun, ResourceActionResult):
            return begun
        _auth, trail, ref = begun
        try:
            for cred_id in req.credential_ids:
                await workflow.execute_activity(
                    "revoke_credential",
                    RevokeCredentialInput(ref=ref, credential_id=cred_id),
                    summary=f"revoke credential {cred_id}",
                    **UNTIL_DONE,
                )
                await trail.record("credential.revoked", credential_id=cred_id)
            await workflow.execute_activity(
                "remove_resource",
                RemoveInput(**ref.model_dump(), idempotency_key=f"{wid}:remove"),
                result_type=Resource,
                summary=f"remove {req.resource_id}",
                **CALL,
            )
        except ActivityError as err:
            stop = stop_from(err)
            await trail.record("resource.removed", outcome="failure", reason=stop.code)
            await trail.flush()
            return ResourceActionResult(
                resource_id=req.resource_id,
                outcome="rejected",
                error_code=stop.code,
                error_message=stop.message,
            )
        await trail.record("resource.removed")
        if workflow.patched("cancel-renewal"):
            # a removed resource never renews again (a resource without renewals: nothing to cancel)
            cancelled = await workflow.execute_activity(
                "cancel_renewal",
                RenewalTarget(provider=ref.provider, resource_id=req.resource_id),
                result_type=bool,
                summary="cancel future renewals",
                **UNTIL_DONE,
            )
            if cancelled:
                await trail.record("renewal.cancelled", reason="removed")
        await trail.flush()
        return ResourceActionResult(resource_id=req.resource_id, outcome="completed")


@workflow.defn(name="RotateCredentialWorkflow")
class RotateCredentialWorkflow:
    @workflow.run
    async def run(self, raw: Any) -> ResourceActionResult:
        """`raw` is the RotateRequest as JSON: validated here, so bad input ends the workflow."""
        req = parse_input(RotateRequest, raw)
        if isinstance(req, str):
            return _invalid(raw, req)
        wid = workflow.info().workflow_id
        begun = await _begin(req.actor, req.service_id, req.resource_id, "rotate", req.request_id)
        if isinstance(begun, ResourceActionResult):
            return begun
        auth, trail, ref = begun
        ttl = req.ttl_seconds
        if auth.max_credential_ttl_seconds is not None:
            ttl = min(ttl, auth.max_credential_ttl_seconds)
        scopes = req.scopes
        if auth.allowed_scopes is not None:
            scopes = [s for s in scopes if s in auth.allowed_scopes]
        try:
            cred: IssuedCredential = await workflow.execute_activity(
                "mint_credential",
                MintInput(ref=ref, scopes=scopes, ttl_seconds=ttl, idempotency_key=f"{wid}:credential"),
                result_type=IssuedCredential,
                summary="mint the new credential",
                **CALL,
            )
        except ActivityError as err:
            stop: Stop = stop_from(err)
            await trail.flush()
            return ResourceActionResult(
                resource_id=req.resource_id,
                outcome="rejected",
                error_code=stop.code,
                error_message=stop.message,
            )
        await trail.record("credential.rotated", credential_id=cred.credential_id)
        if auth.session_ids:
            await workflow.execute_activity(
                "record_credential",
                RecordCredential(
                    session_id=auth.session_ids[-1],
                    provider=ref.provider,
                    credential_id=cred.credential_id,
                    account_ref=auth.principal_id,
                    expires_at=cred.expires_at,
                ),
                summary="record the credential on the session",
                **UNTIL_DONE,
            )
        for old in req.credential_ids:
            await workflow.execute_activity(
                "revoke_credential",
                RevokeCredentialInput(ref=ref, credential_id=old),
                summary=f"revoke the old credential {old}",
                **UNTIL_DONE,
            )
            await trail.record("credential.revoked", credential_id=old)
        await trail.flush()
        return ResourceActionResult(resource_id=req.resource_id, outcome="completed", credential=cred)


__all__ = ["ErrorCode", "RemoveResourceWorkflow", "RotateCredentialWorkflow"]
