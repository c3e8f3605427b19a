"""Readable dumps of association PDUs for debug logs, in the spirit of DCMTK's ``-d``."""

from __future__ import annotations

from minipacs.dicom.uids import uid_name
from minipacs.net.pdu import AAssociateAC, AAssociateRJ, AAssociateRQ
from minipacs.net.presentation import RESULT_NAMES

IDENTITY_TYPES = {1: "username", 2: "username and passcode", 3: "Kerberos", 4: "SAML", 5: "JWT"}


def describe_associate(pdu: AAssociateRQ | AAssociateAC | AAssociateRJ) -> str:
    if isinstance(pdu, AAssociateRJ):
        from minipacs.net.association import describe_rejection

        return "  " + describe_rejection(pdu)
    info = pdu.user_information
    lines = [
        f"  Our/their AE: calling {pdu.calling_ae!r} called {pdu.called_ae!r}",
        f"  Application Context: {pdu.application_context}",
        f"  Implementation: {info.implementation_class_uid or '-'} {info.implementation_version_name or ''}".rstrip(),
        f"  Maximum PDU length: {info.maximum_length if info.maximum_length is not None else 'absent'}",
    ]
    if info.async_ops is not None:
        lines.append(
            f"  Async operations window: invoked {info.async_ops.max_invoked}, performed {info.async_ops.max_performed}"
        )
    for role in info.roles:
        lines.append(
            f"  Role selection {uid_name(role.sop_class_uid)}: SCU={int(role.scu_role)} SCP={int(role.scp_role)}"
        )
    for ext in info.extended:
        lines.append(f"  SOP class extended negotiation {uid_name(ext.sop_class_uid)}: {ext.info.hex()}")
    for cext in info.common_extended:
        lines.append(f"  SOP class common extended {uid_name(cext.sop_class_uid)} service {cext.service_class_uid}")
    if info.user_identity_rq is not None:
        ident = info.user_identity_rq
        lines.append(
            f"  User identity: {IDENTITY_TYPES.get(ident.identity_type, ident.identity_type)}"
            f"{' (response requested)' if ident.positive_response_requested else ''}"
        )
    if info.user_identity_ac is not None:
        lines.append(f"  User identity response: {len(info.user_identity_ac.server_response)} bytes")
    if isinstance(pdu, AAssociateRQ):
        for rq_ctx in pdu.presentation_contexts:
            lines.append(f"  Context {rq_ctx.context_id}: {uid_name(rq_ctx.abstract_syntax)}")
            for ts in rq_ctx.transfer_syntaxes:
                lines.append(f"      proposed {uid_name(ts)}")
    else:
        for ac_ctx in pdu.presentation_contexts:
            result = RESULT_NAMES.get(ac_ctx.result, str(ac_ctx.result))
            ts = f" as {uid_name(ac_ctx.transfer_syntax)}" if ac_ctx.result == 0 else ""
            lines.append(f"  Context {ac_ctx.context_id}: {result}{ts}")
    return "\n".join(lines)
