"""HL7 v2 acknowledgements (HL7 v2.5 2.9, 2.14.1, MSA, ERR): hl7/ack.py."""

from __future__ import annotations

from minipacs.hl7.ack import build_ack, encode_ack
from minipacs.hl7.errors import HL7Error
from minipacs.hl7.message import DEFAULT_ENCODING, parse, parse_bytes
from tests.hl7.samples import NAME, orm, with_msh18

_msh18 = with_msh18


def test_ack_answers_the_message() -> None:
    message = parse(orm())
    ack = parse(build_ack(message, "AA", "order ACC100 scheduled"))
    msh, msa = ack.first("MSH"), ack.first("MSA")
    assert ack.message_type == ("ACK", "O01")
    assert ack.value(msh, 5) == "RIS" and ack.value(msh, 6) == "HOSP" and ack.value(msh, 3) == "MINIPACS"
    assert ack.value(msa, 1) == "AA" and ack.value(msa, 2) == "CTLACC100"
    assert ack.value(msa, 3) == "order ACC100 scheduled" and ack.first("ERR") is None


def test_nak_carries_reason_and_err_segment_even_unparsed() -> None:
    error = HL7Error("PID-3 is empty | really", location="PID-3", error_code=101)
    ack = parse(build_ack(None, "AE", error.reason, error=error))
    assert ack.value(ack.first("MSA"), 3) == "PID-3 is empty | really"
    err = ack.first("ERR")
    assert ack.value(err, 2, 1) == "PID" and ack.value(err, 2, 3) == "3"
    assert ack.value(err, 3, 1) == "101" and ack.value(err, 4) == "E"
    assert ack.encoding == DEFAULT_ENCODING


def test_ack_repeats_msh18() -> None:
    ack = parse(build_ack(parse(_msh18(orm(), "8859/1")), "AA", "ok"))
    assert ack.value(ack.first("MSH"), 18) == "8859/1" and ack.value(ack.first("MSA"), 1) == "AA"
    plain = parse(build_ack(parse(orm()), "AA", "ok"))
    assert plain.value(plain.first("MSH"), 18) == ""


def test_ack_goes_in_the_declared_charset_else_utf8() -> None:
    latin = parse_bytes(_msh18(orm(name=NAME), "8859/1").encode("latin-1"))
    ack = build_ack(latin, "AE", f"{NAME} \u2013 refused")
    assert encode_ack(ack, latin) == ack.encode("latin-1", errors="replace")  # the dash is not Latin-1: '?'
    assert b"M\xfcller" in encode_ack(ack, latin) and b"?" in encode_ack(ack, latin)
    plain = parse_bytes(orm().encode("ascii"))  # no MSH-18
    assert encode_ack(ack, plain) == ack.encode("utf-8") and encode_ack(ack, None) == ack.encode("utf-8")


def test_each_ack_has_its_own_control_id() -> None:
    """HL7 v2.5 2.15.9.10: MSH-10 identifies the message uniquely; two ACKs in the same second had the
    same 'ACK<time>'."""
    ids = [parse(build_ack(parse(orm()), "AA", "ok")).control_id for _ in range(50)]
    assert len(set(ids)) == 50 and all(0 < len(i) <= 20 for i in ids)


def test_err_1_for_versions_before_2_5() -> None:
    """HL7 v2.3 / v2.3.1 / v2.4: ERR has one field, ERR-1 Error Code and Location (ELD); a v2.3.1
    sender (IHE RAD-4 ORM) reads the error there. From v2.5 ERR-2 .. ERR-8 carry it and ERR-1 stays empty."""
    error = HL7Error("PID-3 is empty", location="PID-3", error_code=101)
    old = parse(build_ack(parse(orm()), "AE", error.reason, error=error))  # orm() is v2.3.1
    err = old.first("ERR")
    assert [old.value(err, 1, n) for n in (1, 2, 3)] == ["PID", "1", "3"]
    assert [old.value(err, 1, 4, s) for s in (1, 2, 3)] == ["101", "Required field missing", "HL70357"]
    assert old.value(err, 3, 1) == "101"
    whole = HL7Error("no PID segment", location="PID", error_code=100)
    segment = parse(build_ack(parse(orm()), "AE", whole.reason, error=whole)).first("ERR")
    assert segment is not None and segment.fields[1] == "PID^1^^100&Segment sequence error&HL70357"
    new = parse(build_ack(parse(orm().replace("|P|2.3.1", "|P|2.5.1")), "AE", error.reason, error=error))
    assert new.raw(new.first("ERR"), 1) == "" and new.value(new.first("ERR"), 3, 1) == "101"
