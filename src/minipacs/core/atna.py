"""Audit rows as DICOM Audit Messages (PS3.15 Annex A.5) in RFC 5424 syslog messages (the IHE ATNA shape).

Pure functions: the network side is services/audit_syslog.py. Each audit row (core/audit.py) becomes
one ``<AuditMessage>`` (PS3.15 A.5.1 schema: ``EventIdentification``, ``ActiveParticipant``,
``AuditSourceIdentification``, ``ParticipantObjectIdentification``; coded values as ``csd-code``,
``codeSystemName``, ``originalText``), carried in a syslog message of facility 10 (security/
authorization), severity 5 (notice), APP-NAME ``minipacs``, MSGID ``IHE+RFC-3881`` (IHE ITI TF-2 3.20).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Final, NamedTuple
from xml.etree import ElementTree as ET


class EventCode(NamedTuple):
    code: str
    meaning: str
    action_code: str  # EventActionCode: C(reate), R(ead), U(pdate), D(elete), E(xecute)
    type_code: str = ""  # EventTypeCode (DCM), for the events that have one
    type_meaning: str = ""


# PS3.15 A.5.3 / PS3.16 CID 400 Audit Event ID (DCM codes): our action -> the audit message event
EVENTS: Final[Mapping[str, EventCode]] = {
    "viewed": EventCode("110103", "DICOM Instances Accessed", "R"),
    "downloaded": EventCode("110106", "Export", "R"),
    "exported": EventCode("110106", "Export", "R"),
    "sent": EventCode("110104", "DICOM Instances Transferred", "R"),
    "retrieved": EventCode("110104", "DICOM Instances Transferred", "R"),
    "queried": EventCode("110112", "Query", "E"),
    "deleted": EventCode("110105", "DICOM Study Deleted", "D"),
    "modified": EventCode("110103", "DICOM Instances Accessed", "U"),
    "merged": EventCode("110110", "Patient Record", "U"),
    "anonymized": EventCode("110103", "DICOM Instances Accessed", "R"),
    "stored": EventCode("110104", "DICOM Instances Transferred", "C"),
    # PS3.15 A.5.3 User Authentication (CID 403 / 110122, 110123) and Application Activity (CID 401)
    "login": EventCode("110114", "User Authentication", "E", "110122", "Login"),
    "logout": EventCode("110114", "User Authentication", "E", "110123", "Logout"),
    "app_start": EventCode("110100", "Application Activity", "E", "110120", "Application Start"),
    "app_stop": EventCode("110100", "Application Activity", "E", "110121", "Application Stop"),
    "audit_read": EventCode("110101", "Audit Log Used", "R"),
    # PS3.15 A.5.3.11 Security Alert, EventTypeCode from CID 403 Security Alert Type
    "network_config": EventCode("110113", "Security Alert", "E", "110128", "Network Configuration"),
    "software_config": EventCode("110113", "Security Alert", "E", "110131", "Software Configuration"),
}

#: The Security Alert events' Alert Subject (PS3.15 A.5.3.11): the configuration that changed, by the URI
#: that reads it (the row's detail says what changed in it).
ALERT_SUBJECTS: Final[Mapping[str, tuple[str, str]]] = {
    "network_config": ("/api/nodes", "DICOM nodes"),
    "software_config": ("/api/rules", "Auto-routing rules"),
}

#: The Audit Log Used event's participant object: this archive's audit trail, by the URI that reads it.
AUDIT_LOG_URI: Final = "/api/audit"

#: The events whose participants are a user and the node that authenticated them (no Source Role ID).
AUTHENTICATION: Final = frozenset({"login", "logout"})
#: The events whose participants are this application (110150) and who launched it (110151).
APPLICATION: Final = frozenset({"app_start", "app_stop"})

#: RFC 5424 §6.2.1: PRI = facility * 8 + severity; facility 10 security/authorization, severity 5 notice.
PRI: Final = 10 * 8 + 5
APP_NAME: Final = "minipacs"
MSGID: Final = "IHE+RFC-3881"
_BOM: Final = b"\xef\xbb\xbf"  # RFC 5424 §6.4: an UTF-8 MSG starts with the BOM


def _coded(parent: ET.Element, tag: str, code: str, system: str, meaning: str) -> None:
    ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": meaning})


def audit_message(row: Mapping[str, Any], source_id: str, local_address: str = "") -> bytes:
    """The PS3.15 A.5 ``AuditMessage`` XML (UTF-8) of one audit row; ``source_id`` names this archive
    (its AE title), the audit source and the non-requesting active participant."""
    event = EVENTS[str(row["action"])]
    when: dt.datetime = row["time"]
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": event.action_code,
            "EventDateTime": when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            # 0 success, 4 minor failure (a refused login): the row's outcome (core/audit.py Outcome)
            "EventOutcomeIndicator": str(int(row.get("outcome") or 0)),
        },
    )
    _coded(ident, "EventID", event.code, "DCM", event.meaning)
    if event.type_code:
        _coded(ident, "EventTypeCode", event.type_code, "DCM", event.type_meaning)
    action = str(row["action"])
    archive = {"UserID": source_id, "UserIsRequestor": "false"}
    if local_address:
        archive.update(NetworkAccessPointID=local_address, NetworkAccessPointTypeCode="2")
    if action in APPLICATION:  # the application itself, and (when known) the OS user who started it
        app = ET.SubElement(root, "ActiveParticipant", archive)
        _coded(app, "RoleIDCode", "110150", "DCM", "Application")
        if row["actor"]:
            launcher = ET.SubElement(
                root, "ActiveParticipant", {"UserID": str(row["actor"]), "UserIsRequestor": "true"}
            )
            _coded(launcher, "RoleIDCode", "110151", "DCM", "Application Launcher")
    else:
        requestor = {"UserID": str(row["actor"]) or str(row["actor_kind"]), "UserIsRequestor": "true"}
        if row["address"]:
            requestor.update(NetworkAccessPointID=str(row["address"]), NetworkAccessPointTypeCode="2")  # 2: IP
        if row["actor_kind"] == "dicom":
            requestor["AlternativeUserID"] = str(row["actor"])  # the AE title (PS3.15 A.5.2.2)
        ET.SubElement(root, "ActiveParticipant", requestor)
        node = ET.SubElement(root, "ActiveParticipant", archive)
        # a login's other participant is the node that authenticated, an audit read's the log's keeper:
        # neither is the Source of a transfer
        if action not in AUTHENTICATION and action != "audit_read" and action not in ALERT_SUBJECTS:
            _coded(node, "RoleIDCode", "110153", "DCM", "Source Role ID")
    ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source_id})
    if action == "audit_read":  # PS3.15 A.5.3: the audit log, a Security Resource named by its URI
        used = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": AUDIT_LOG_URI,
                "ParticipantObjectTypeCode": "2",  # system object
                "ParticipantObjectTypeCodeRole": "13",  # security resource
            },
        )
        _coded(used, "ParticipantObjectIDTypeCode", "12", "RFC-3881", "URI")
        ET.SubElement(used, "ParticipantObjectName").text = "Security Audit Log"
        if row["detail"]:
            ET.SubElement(used, "ParticipantObjectDescription").text = str(row["detail"])
    if action in ALERT_SUBJECTS:  # PS3.15 A.5.3.11: the Alert Subject, a Security Resource
        uri, name = ALERT_SUBJECTS[action]
        subject = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": uri,
                "ParticipantObjectTypeCode": "2",  # system object
                "ParticipantObjectTypeCodeRole": "13",  # security resource
            },
        )
        _coded(subject, "ParticipantObjectIDTypeCode", "12", "RFC-3881", "URI")
        ET.SubElement(subject, "ParticipantObjectName").text = name
        if row["detail"]:
            ET.SubElement(subject, "ParticipantObjectDescription").text = str(row["detail"])
    if row["study_uid"]:
        study = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {"ParticipantObjectID": str(row["study_uid"]), "ParticipantObjectTypeCode": "2"},  # 2: system object
        )
        study.set("ParticipantObjectTypeCodeRole", "3")  # 3: report
        _coded(study, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")
        if row["detail"]:
            ET.SubElement(study, "ParticipantObjectDescription").text = str(row["detail"])
    if row["patient_id"]:
        patient = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": str(row["patient_id"]),
                "ParticipantObjectTypeCode": "1",  # 1: person
                "ParticipantObjectTypeCodeRole": "1",  # 1: patient
            },
        )
        _coded(patient, "ParticipantObjectIDTypeCode", "2", "RFC-3881", "Patient Number")
    xml: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return xml


def _header_field(text: str, limit: int) -> str:
    """RFC 5424 §6: header fields are PRINTUSASCII (33-126), "-" when empty."""
    cleaned = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def syslog_message(xml: bytes, when: dt.datetime, hostname: str, procid: str = "-") -> bytes:
    """RFC 5424 §6: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM MSG``."""
    stamp = when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    head = f"<{PRI}>1 {stamp} {_header_field(hostname, 255)} {APP_NAME} {_header_field(procid, 128)} {MSGID} - "
    return head.encode("ascii") + _BOM + xml


def octet_counted(message: bytes) -> bytes:
    """RFC 5425 §4.3 (syslog over TLS): ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


__all__ = [
    "ALERT_SUBJECTS",
    "APPLICATION",
    "APP_NAME",
    "AUDIT_LOG_URI",
    "AUTHENTICATION",
    "EVENTS",
    "MSGID",
    "PRI",
    "EventCode",
    "audit_message",
    "octet_counted",
    "syslog_message",
]
