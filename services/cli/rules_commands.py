"""`alliance rules validate` and `alliance rules simulate`: check rule files (campaigns, referral
policies and dispatch policies) and dry-run an event against a campaign, for the ops staff who edit
them. Neither writes anything. (Referral registrations are dry-run by `alliance referral simulate`,
a dispatch cutoff by `alliance dispatch run-cutoff --dry-run`.)"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from services.dispatch.policy import Policy as DispatchPolicy
from services.dispatch.policy import load_policy as load_dispatch_policy
from services.foundation.rules.book import duplicate_ids
from services.foundation.rules.engine import Matcher
from services.foundation.rules.errors import RuleFileError
from services.points.benefits.quote import compile_benefits
from services.points.campaign_file.loader import find_duplicate_ids, load_campaign
from services.points.campaign_file.model import Campaign
from services.points.campaigns.book import CampaignBook, compile_campaign
from services.points.campaigns.evaluation import EarnEvent, Evaluation
from services.referral.policy import PolicyFile, load_policy

RULE_FILE_PATTERNS = ("*.yaml", "*.yml")
REFERRAL_DIRECTORY = "referral"  # rules/referral/: the referral service's policy files
DISPATCH_DIRECTORY = "dispatch"  # rules/dispatch/: the dispatch service's policy file
_POLICY_KEY = re.compile(rb"^policy[ \t]*:", re.MULTILINE)
_FALLBACK_BRANCH_KEY = re.compile(rb"^fallback_branch[ \t]*:", re.MULTILINE)


def add_rules_parser(subparsers: Any) -> None:
    rules = subparsers.add_parser(
        "rules",
        help="check rule files (campaigns, referral and dispatch policies) and dry-run events against campaigns",
    )
    commands = rules.add_subparsers(dest="rules_command", metavar="SUBCOMMAND", required=True)

    validate_cmd = commands.add_parser(
        "validate",
        help="check rule files; every error with file:line; exit 1 if any is bad",
        description="Check rule files (or every *.yaml/*.yml under directories) the way a running service "
        "would load them, including ids that clash across files. Files under a 'dispatch' directory, or with "
        "top-level keys 'policy:' and 'fallback_branch:', are dispatch policies (the dispatch service's rules; "
        "it reads one file, so a second one in the same directory is refused); files under a 'referral' "
        "directory, or with another top-level 'policy:', are referral policies (the referral service's); the "
        "others are campaigns (the points service's).",
        epilog="examples:\n  alliance rules validate rules/\n  alliance rules validate rules/referral/default.yaml "
        "rules/campaigns/referral-autumn-2026.yaml\n  alliance rules validate rules/dispatch",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    validate_cmd.add_argument(
        "paths", nargs="+", metavar="PATH", help="a campaign file, a referral or dispatch policy file, or a directory"
    )
    validate_cmd.set_defaults(func=validate)

    simulate_cmd = commands.add_parser(
        "simulate",
        help="show which rules of a campaign an event fires and the points, writing nothing",
        description='EVENT.json: {"event_type": "merchant.spend", "occurred_at": "2026-11-23T12:00:00+08:00", '
        '"amount": "238.50", "attributes": {"merchant_category": "cinema"}}. CAMPAIGN_OR_FILE is a campaign '
        "id from the rules directory, or a campaign file (a draft is simulated in place of the campaign "
        "with the same id).",
    )
    simulate_cmd.add_argument("campaign", metavar="CAMPAIGN_OR_FILE")
    simulate_cmd.add_argument("event", metavar="EVENT.json")
    simulate_cmd.add_argument("--rules-dir", default="rules", help="the rules directory (default: rules)")
    simulate_cmd.set_defaults(func=simulate)


# -- validate ---------------------------------------------------------------------------------


def validate(args: argparse.Namespace) -> int:
    bad = 0
    files: list[str] = []
    for given in args.paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(str(f) for f in _rule_files(path, recursive=True))
            if not found:
                print(f"{given}: no rule files (*.yaml, *.yml) found")
                bad += 1
            files.extend(found)
        elif path.is_file():
            files.append(str(path))
        else:
            print(f"{given}: no such file or directory")
            bad += 1
    files = list(dict.fromkeys(files))  # a file named and also inside a named directory counts once
    contents: dict[str, bytes] = {}
    errors: dict[str, RuleFileError] = {}
    for file in files:
        try:
            contents[file] = Path(file).read_bytes()
        except OSError as error:
            errors[file] = RuleFileError(file, None, "", f"cannot be read: {error.strerror or error}")
    dispatch_files = [f for f in contents if is_dispatch_policy(f, contents[f])]
    dispatch_policies, dispatch_errors = load_dispatch_policies({f: contents[f] for f in dispatch_files})
    errors.update(dispatch_errors)
    policy_files = [f for f in contents if f not in dispatch_files and is_referral_policy(f, contents[f])]
    policies, policy_errors = load_policies({f: contents[f] for f in policy_files})
    errors.update(policy_errors)
    campaigns, campaign_errors = _load_campaigns(
        {f: c for f, c in contents.items() if f not in policy_files and f not in dispatch_files}
    )
    errors.update(campaign_errors)
    for file in files:
        if file in errors:
            for problem in errors[file].problems:
                print(problem)
        elif file in dispatch_policies:
            print(f"OK {file} ({_dispatch_summary(dispatch_policies[file])})")
        elif file in policies:
            print(f"OK {file} ({_policy_summary(policies[file])})")
        else:
            print(f"OK {file} ({_campaign_summary(campaigns[file])})")
    bad += len(errors)
    print(f"{len(files) - len(errors)} of {len(files)} files OK" + (f", {len(errors)} refused" if errors else ""))
    return 1 if bad else 0


def is_referral_policy(file: str, content: bytes) -> bool:
    """A referral policy file: in a `referral` directory (the service reads RULES_DIR/referral), or
    with a top-level `policy:` key (and not a dispatch policy: see is_dispatch_policy)."""
    if Path(file).parent.name == REFERRAL_DIRECTORY:
        return True
    return _POLICY_KEY.search(content) is not None and not is_dispatch_policy(file, content)


def is_dispatch_policy(file: str, content: bytes) -> bool:
    """A dispatch policy file: in a `dispatch` directory (the service reads RULES_DIR/dispatch), or
    with top-level `policy:` and `fallback_branch:` keys (a referral policy has no fallback branch)."""
    if Path(file).parent.name == DISPATCH_DIRECTORY:
        return True
    return _POLICY_KEY.search(content) is not None and _FALLBACK_BRANCH_KEY.search(content) is not None


def load_dispatch_policies(
    contents: Mapping[str, bytes],
) -> tuple[dict[str, DispatchPolicy], dict[str, RuleFileError]]:
    """Dispatch policy files as the dispatch service loads them: each file on its own; the service
    reads one file per directory (the first good one by name rules), so the other good files of a
    `dispatch` directory are refused."""
    policies: dict[str, DispatchPolicy] = {}
    errors: dict[str, RuleFileError] = {}
    for file, content in contents.items():
        try:
            policies[file] = load_dispatch_policy(file, content)
        except RuleFileError as error:
            errors[file] = error
    ruling: dict[Path, str] = {}
    for file in sorted(policies):
        directory = Path(file).parent
        if directory.name != DISPATCH_DIRECTORY:
            continue  # a draft elsewhere: checked on its own
        if directory not in ruling:
            ruling[directory] = file
            continue
        found = _POLICY_KEY.search(contents[file])
        line = contents[file].count(b"\n", 0, found.start()) + 1 if found else None
        errors[file] = RuleFileError(
            file,
            line,
            "policy",
            f"{ruling[directory]} is the dispatch policy in force (the first file by name); the service "
            "ignores this one: merge the two files",
        )
        del policies[file]
    return policies, errors


def load_policies(contents: Mapping[str, bytes]) -> tuple[dict[str, PolicyFile], dict[str, RuleFileError]]:
    """Referral policy files as the referral service loads them: each file on its own, then policy
    ids that an earlier file (by name) already uses are refused (the service leaves them out)."""
    policies: dict[str, PolicyFile] = {}
    errors: dict[str, RuleFileError] = {}
    for file, content in contents.items():
        try:
            policies[file] = load_policy(file, content)
        except RuleFileError as error:
            errors[file] = error
    for file, clash in duplicate_ids(policies, "policy").items():
        errors[file] = clash
        del policies[file]
    return policies, errors


def _load_campaigns(contents: Mapping[str, bytes]) -> tuple[dict[str, Campaign], dict[str, RuleFileError]]:
    loaded: dict[str, Campaign] = {}
    errors: dict[str, RuleFileError] = {}
    matcher = Matcher()
    try:
        for file, content in contents.items():
            try:
                campaign = load_campaign(file, content)
                compiled = compile_campaign(matcher, campaign)  # the engine's own limits
                if compiled is not None:
                    matcher.remove(compiled)
                compiled_offers = compile_benefits(matcher, campaign)  # the benefits offers, likewise
                if compiled_offers is not None:
                    matcher.remove(compiled_offers)
                loaded[file] = campaign
            except RuleFileError as error:
                errors[file] = error
    finally:
        matcher.close()
    errors.update(find_duplicate_ids(loaded))
    return loaded, errors


def _campaign_summary(campaign: Campaign) -> str:
    count = len(campaign.points.rules) if campaign.points else 0
    summary = f"{campaign.id}, version {campaign.version}, {count} rule{'' if count == 1 else 's'}"
    if campaign.benefits is not None:
        offers = len(campaign.benefits.offers)
        summary += f", {offers} benefit offer{'' if offers == 1 else 's'}"
    return summary


def _policy_summary(policy: PolicyFile) -> str:
    rules = len(policy.velocity)
    summary = f"referral policy {policy.id}, version {policy.version}, {rules} velocity rule{'' if rules == 1 else 's'}"
    if policy.levels is not None:
        summary += f", rewards {policy.levels} level{'' if policy.levels == 1 else 's'}"
    if policy.campaigns:
        summary += f", {len(policy.campaigns)} campaign{'' if len(policy.campaigns) == 1 else 's'}"
    return summary


def _dispatch_summary(policy: DispatchPolicy) -> str:
    products = len(policy.product_cutoffs)
    summary = (
        f"dispatch policy {policy.id}, version {policy.version}, cutoff {policy.cutoff:%H:%M} {policy.timezone.key}"
    )
    if products:
        times = ", ".join(f"{p} {at:%H:%M}" for p, at in sorted(policy.product_cutoffs.items()))
        summary += f", {products} product cutoff{'' if products == 1 else 's'} ({times})"
    summary += f", preferred window {_span(policy.preferred_window)}"
    if policy.contact_within is None:
        summary += ", no contact SLA"
    else:
        then = ", then back to the pool" if policy.return_to_pool else ""
        summary += f", SLA contact within {_span(policy.contact_within)}{then}"
    return summary + f", fallback branch {policy.fallback_branch}"


def _span(span: timedelta) -> str:
    """90s, 30m, 2h, 1h30m (the rule file's own notation); 0m for nothing."""
    minutes, seconds = divmod(int(span.total_seconds()), 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (seconds, "s")) if n]
    return "".join(parts) or "0m"


def _rule_files(directory: Path, recursive: bool) -> Iterator[Path]:
    # Skip dot names: a Kubernetes ConfigMap mount holds ..data/ and ..<timestamp>/ copies.
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if recursive:
                yield from _rule_files(entry, recursive)
        elif any(entry.match(pattern) for pattern in RULE_FILE_PATTERNS):
            yield entry


# -- simulate ---------------------------------------------------------------------------------


def simulate(args: argparse.Namespace) -> int:
    try:
        event = read_event(Path(args.event))
    except (OSError, ValueError) as error:
        print(f"{args.event}: {error}")
        return 1
    campaigns_dir = Path(args.rules_dir) / "campaigns"
    campaigns = _load_directory(campaigns_dir)
    target = Path(args.campaign)
    if target.is_file():
        try:
            draft = load_campaign(str(target), target.read_bytes())
        except RuleFileError as refused:
            for problem in refused.problems:
                print(problem)
            return 1
        campaigns = {file: c for file, c in campaigns.items() if c.id != draft.id}
        campaigns[str(target)] = draft
        campaign_id = draft.id
    else:
        campaign_id = args.campaign
        if all(c.id != campaign_id for c in campaigns.values()):
            known = ", ".join(sorted(c.id for c in campaigns.values())) or "none"
            print(f"no campaign '{campaign_id}' in {campaigns_dir} (campaigns there: {known})")
            return 1
    book = CampaignBook(Matcher(), name="simulate")
    book.replace(campaigns)
    campaign = book.get(campaign_id)
    if campaign is None:  # refused by the book (engine limits)
        for rejection in book.rejected.values():
            for problem in rejection.problems:
                print(problem)
        print(f"campaign '{campaign_id}' could not be loaded")
        return 1
    print_simulation(campaign, event, book.evaluate(event))
    return 0


def read_event(path: Path) -> EarnEvent:
    """EVENT.json -> EarnEvent; ValueError naming the field that is wrong."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError("must be a JSON object with event_type, occurred_at, amount, attributes")
    unknown = set(raw) - {"event_type", "occurred_at", "amount", "attributes"}
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
    event_type = raw.get("event_type")
    if not isinstance(event_type, str) or not event_type:
        raise ValueError("event_type is required, e.g. merchant.spend")
    try:
        occurred_at = datetime.fromisoformat(str(raw.get("occurred_at")))
    except ValueError:
        raise ValueError("occurred_at must be an ISO date-time, e.g. 2026-11-23T12:00:00+08:00") from None
    if occurred_at.tzinfo is None:
        raise ValueError("occurred_at needs a UTC offset, e.g. 2026-11-23T12:00:00+08:00")
    amount = None
    if raw.get("amount") not in (None, ""):
        try:
            amount = Decimal(str(raw["amount"]))
        except InvalidOperation:
            raise ValueError(f"amount must be a decimal number, got {raw['amount']!r}") from None
        if not amount.is_finite():
            raise ValueError(f"amount must be a decimal number, got {raw['amount']!r}")
    attributes = raw.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise ValueError("attributes must be an object of name: value")
    return EarnEvent(event_type, occurred_at, amount, {str(k): str(v) for k, v in attributes.items()})


def _load_directory(directory: Path) -> dict[str, Campaign]:
    campaigns: dict[str, Campaign] = {}
    if not directory.is_dir():
        print(f"note: {directory} does not exist; simulating without other campaigns")
        return campaigns
    for file in _rule_files(directory, recursive=False):
        try:
            campaigns[str(file)] = load_campaign(str(file), file.read_bytes())
        except RuleFileError as error:
            print(f"note: {file} is refused and left out ({error})")
    return campaigns


def print_simulation(campaign: Campaign, event: EarnEvent, evaluation: Evaluation) -> None:
    tz = campaign.timezone
    attributes = ", ".join(f"{k}={v}" for k, v in sorted(event.attributes.items())) or "none"
    amount = "none" if event.amount is None else f"{event.amount} CNY"
    print(f"Event {event.event_type} at {event.occurred_at.isoformat()}, amount {amount}, attributes {attributes}")
    print(f"Campaign {campaign.id}: {campaign.title}")
    print(f"  file {campaign.file}, version {campaign.version}, priority {campaign.priority}", end="")
    print(", exclusive" if campaign.exclusive else "")
    until = campaign.active_until.astimezone(tz).isoformat() if campaign.active_until else "open-ended"
    period = f"from {campaign.active_from.astimezone(tz).isoformat()} until {until}"
    if not campaign.is_active(event.occurred_at):
        print(f"  not active at the event ({period}): awards nothing")
        return
    print(f"  active at the event ({period})")
    if campaign.points is None:
        print("  has no points terms")
        return
    mine = [m for m in evaluation.matched_rules if m.campaign_id == campaign.id]
    if not mine:
        print("  no rule matches this event")
    for matched in mine:
        if matched.awarded:
            candidate = next(
                c for c in evaluation.candidates if c.campaign_id == campaign.id and c.rule_id == matched.rule_id
            )
            expiry = candidate.expires_at.astimezone(tz).isoformat() if candidate.expires_at else "never"
            print(f"  rule {matched.rule_id}: {matched.points} points, expiring {expiry}")
        else:
            print(f"  rule {matched.rule_id}: {matched.points} points, NOT awarded: {matched.reason}")
    total = sum(c.points for c in evaluation.candidates if c.campaign_id == campaign.id)
    print(f"  total before caps and budget: {total} points")
    limits = campaign.points.caps.describe()
    if campaign.points.budget is not None:
        limits.append(f"a budget of {campaign.points.budget} points for all users")
    if limits:
        print(f"  caps and budget depend on the points ledger and are not applied here: {'; '.join(limits)}")
    else:
        print("  this campaign has no caps and no budget")
    others = [c for c in evaluation.candidates if c.campaign_id != campaign.id]
    for other in others:
        print(f"Also awarded by campaign {other.campaign_id}, rule {other.rule_id}: {other.points} points")
    print("Nothing was written.")
