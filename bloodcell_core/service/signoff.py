"""The sign-off rule, in one place: who may release a report, what a sign-off records, what a later change does.

The console, the API and the CLI all sign off through ``review.sign_off``, which applies this rule with the
sample's row locked. As laboratories do it:

- A sign-off is made by a person: an enabled console user, under the role of their account. A report with
  a blast flag needs at least BLOODCELL_SIGNOFF_BLAST_ROLE. An API or CLI sign-off names the user it is made for.
- It approves one version of the report, and records the person, their role, the time, the comment, what
  they confirmed and the counts they approved.
- A sample with failed images, or with fewer classified leukocytes than BLOODCELL_SIGNOFF_MIN_LEUKOCYTES, is
  signed off only with an explicit confirmation, which is recorded with it.
- A second sign-off of a report that has not changed is refused.
- Any change to a signed report (a relabel, cells classified or failed later) withdraws the approval: the
  report is preliminary again, the sample goes back to review, and the exports name nobody. The next
  sign-off by someone allowed releases the corrected report (``amended``: FHIR amended, HL7 OBR-25 C)
  under their name. Every earlier sign-off stays in the history with what it approved.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from bloodcell_core.config import Settings
from bloodcell_core.service.audit_log import record_event
from bloodcell_core.service.errors import Conflict, Forbidden
from bloodcell_core.service.results import Report, SignOffRecord
from bloodcell_core.service.states import ReportStatus, Role, SampleFlag, SampleStatus
from bloodcell_core.service.tables import Sample, SampleReport, SignOff, User
from bloodcell_core.service.users import has_role

CONFIRM_FIELD = "confirm_incomplete"  # the API's and the console's name for the explicit confirmation


def may_sign_off(settings: Settings, role: str, blast_flag: bool) -> bool:
    """Any role signs off a sample without a blast flag; with one, at least ``settings.signoff_blast_role``."""
    if role not in {r.value for r in Role}:
        return False
    return not blast_flag or has_role(role, settings.signoff_blast_role)


def confirmations_needed(settings: Settings, report: Report) -> list[str]:
    """What a signer must confirm explicitly before this report is released (empty: nothing)."""
    needed = []
    if report.n_failed:
        needed.append(f"{report.n_failed} of {report.n_cells} images could not be classified")
    leukocytes = report.n_leukocytes or 0
    if leukocytes < settings.signoff_min_leukocytes:
        needed.append(
            f"only {leukocytes} leukocytes were classified (BLOODCELL_SIGNOFF_MIN_LEUKOCYTES={settings.signoff_min_leukocytes})"
        )
    return needed


def _signer_role(session: Session, name: str) -> str:
    user = session.scalar(select(User).where(User.name == name))
    if user is None or user.disabled_at is not None:
        raise Forbidden(f"a sign-off names the console user it is made for: no enabled user named {name[:128]!r}")
    return user.role


def approve(
    session: Session,
    settings: Settings,
    sample: Sample,
    report: Report,
    signer: str,
    comment: str,
    confirm_incomplete: bool,
    actor: str,
) -> None:
    """Check the rule against REPORT (the sample's report just rebuilt, its row locked) and record the approval."""
    accession_id = sample.accession_id
    if sample.status == SampleStatus.FAILED:
        raise Conflict(f"sample {accession_id!r} failed: {sample.error}")
    if sample.signed_off_at is not None:
        at = sample.signed_off_at.isoformat(timespec="seconds")
        raise Conflict(
            f"sample {accession_id!r} is already signed off by {sample.signed_off_by} at {at} and has not changed since: "
            "there is nothing new to sign off"
        )
    if report.needs_review:
        raise Conflict(
            f"{len(report.needs_review)} cells still need review (low confidence or unlike the training images) before sign-off"
        )
    role = _signer_role(session, signer)
    if not may_sign_off(settings, role, report.blast_flag):
        raise Forbidden(
            f"this sample has a blast flag: signing it off needs the {settings.signoff_blast_role} role; {signer} is {role}"
        )
    confirmed = confirmations_needed(settings, report)
    if confirmed and not confirm_incomplete:
        raise Conflict(f"confirm to sign off anyway ({CONFIRM_FIELD}): " + "; ".join(confirmed))
    row = session.scalar(select(SampleReport).where(SampleReport.sample_id == sample.id))
    assert row is not None  # a report that needs no review was built
    earlier = session.scalar(select(SignOff.id).where(SignOff.sample_id == sample.id).limit(1))
    status = ReportStatus.AMENDED if earlier is not None else ReportStatus.FINAL
    now = datetime.now(timezone.utc)
    session.add(
        SignOff(
            sample_id=sample.id,
            report_version=row.version,
            report_status=status,
            signed_by=signer,
            role=role,
            comment=comment,
            confirmed=confirmed,
            counts=row.counts,
            percent=row.percent,
            flags=list(row.flags),
            signed_at=now,
        )
    )
    sample.report_status, sample.signed_off_by, sample.signed_off_at = status, signer, now
    record_event(
        session,
        actor,
        "sample.signed_off",
        accession_id,
        reviewer=signer,
        role=role,
        comment=comment,
        confirmed=confirmed,
        report_status=status,
        report_version=row.version,
        counts=row.counts,
    )


def withdraw(session: Session, sample: Sample, report_version: int) -> bool:
    """The signed report changed (now REPORT_VERSION): its approval is withdrawn, kept in the history, and
    the report is preliminary until someone signs it again. False when nothing was signed off."""
    if sample.signed_off_at is None:
        return False
    current = session.scalar(select(SignOff).where(SignOff.sample_id == sample.id, SignOff.withdrawn_at.is_(None)))
    if current is not None:
        current.withdrawn_at = datetime.now(timezone.utc)
    record_event(
        session,
        "bloodcell",
        "sample.sign_off_withdrawn",
        sample.accession_id,
        signed_off_by=sample.signed_off_by,
        report_version=report_version,
    )
    sample.report_status, sample.signed_off_by, sample.signed_off_at = ReportStatus.PRELIMINARY, None, None
    return True


def awaiting_sign_off_again(session: Session, sample: Sample) -> bool:
    """Whether a report that was signed off changed since and waits for a new sign-off."""
    if sample.signed_off_at is not None:
        return False
    return session.scalar(select(SignOff.id).where(SignOff.sample_id == sample.id).limit(1)) is not None


def history(session: Session, sample: Sample) -> list[SignOffRecord]:
    """Every sign-off of the sample, oldest first, with the version and the counts it approved."""
    rows = session.scalars(select(SignOff).where(SignOff.sample_id == sample.id).order_by(SignOff.id))
    return [
        SignOffRecord(
            report_version=s.report_version,
            report_status=ReportStatus(s.report_status),
            signed_off_by=s.signed_by,
            role=s.role,
            signed_off_at=s.signed_at.isoformat(),
            comment=s.comment,
            confirmed=s.confirmed,
            counts=s.counts,
            percent=s.percent,
            flags=[SampleFlag(flag) for flag in s.flags],
            withdrawn_at=s.withdrawn_at.isoformat() if s.withdrawn_at else None,
        )
        for s in rows
    ]
