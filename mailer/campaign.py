"""A campaign: a recipient list, a template and the settings that turn them into messages.

``check()`` is the one pass over the list: it validates every row, renders every message
once, asks the plan (``plan.Planner``) what each guest gets, and hands each guest to a
visitor (the run puts their message into the queue). A list of 100,000 people is never
held in memory, rendered or not, and never read twice.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .address import Mailbox
from .attachments import (
    MAX_BYTES,
    WARN_BYTES,
    AttachmentError,
    AttachmentStore,
    encoded_size,
)
from .errors import InputError, TemplateError, UsageProblem
from .mailsafe import check_html
from .message import (
    Attachment,
    Invitation,
    MessageFactory,
    content_id,
    message_id,
)
from .models import Decision, EventRun, Kind, Outgoing, Plain, Problem, Recipient, Rendered
from .recipients import KNOWN_LANGUAGES, RecipientList, language_warning, load_suppressions
from .settings import Settings

if TYPE_CHECKING:  # imported when a campaign has a template, or --where: a check of a
    # list alone starts without Jinja and the event models
    from .calendar import Event
    from .plan import Knowledge, Planner
    from .render import Renderer
    from .rsvp import Links
    from .templates import TemplateFolder


# What the pass gives the run for each valid guest: the guest, the plan's word, the
# rendered parts (None: suppressed, or no template) and the files attached.
Visit = Callable[[Recipient, "Decision | None", "Rendered | None", "list[Attachment]"], None]


@dataclass
class CheckReport:
    """What a check of the whole list found."""

    path: str
    rows: int = 0
    recipients: int = 0
    suppressed: int = 0
    problems: list[str] = field(default_factory=list)  # errors in the list itself
    warnings: list[str] = field(default_factory=list)
    languages: dict[str, int] = field(default_factory=dict)
    fallback: int = 0  # recipients whose language has no variant (they get the default)
    matching: int | None = None  # recipients that pass every --where (None: no --where)
    fallback_language: str = ""
    # a template error (without the recipient line) → the list lines it happened on
    template_errors: dict[str, list[int]] = field(default_factory=dict)

    @property
    def errors(self) -> list[str]:
        """Every error, one line each; a template error is named once with its first line."""
        found = list(self.problems)
        for text, lines in self.template_errors.items():
            lines = sorted(lines)
            more = f"; and {len(lines) - 1} more" if len(lines) > 1 else ""
            found.append(f"{text} (recipient on line {lines[0]}{more})")
        return found

    @property
    def ok(self) -> bool:
        return not self.problems and not self.template_errors

    def summary(self) -> str:
        def n(count: int, word: str) -> str:
            return f"{count} {word}{'' if count == 1 else 's'}"

        parts = [n(self.rows, "row") + " read", n(self.recipients, "recipient"),
                 n(len(self.errors), "error"),
                 n(len(self.warnings), "warning")]
        if self.suppressed:
            parts.append(f"{self.suppressed} suppressed (would be skipped)")
        if self.fallback:
            parts.append(f"{self.fallback} with an unknown language got "
                         f"{self.fallback_language or 'the default'}")
        if self.matching is not None:
            parts.append(f"{self.matching} match --where")
        if self.languages:
            parts.append("by language: " + " / ".join(f"{lang} {count}" for lang, count
                                                      in sorted(self.languages.items())))
        return f"{self.path}: {', '.join(parts)}"


def default_campaign_id(template: str, recipients: Path) -> str:
    """Template name + recipients file name, e.g. ``invitasjon:eksempel.csv``; for a list
    on standard input or from a pipe (``<(…)``, whose name changes), ``invitasjon:stdin``."""
    import stat

    name = recipients.name
    try:
        if str(recipients) == "-" or not stat.S_ISREG(recipients.stat().st_mode):
            name = "stdin"
    except OSError:
        pass
    return f"{template}:{name}"


class Campaign:
    """Everything needed to check, render and build the messages of one run."""

    def __init__(self, settings: Settings, recipients: Path, template: str | None, *,
                 variables: Mapping[str, str] = {}, suppress: Sequence[Path] = (),
                 campaign_id: str | None = None, need_sender: bool = True,
                 where: Sequence[str] = (), attach: Sequence[Path] = (),
                 attachments_dir: Path | None = None, sheet: str | None = None) -> None:
        self.settings = settings
        self.listing = RecipientList(recipients, sheet)
        self.template = template
        self.id = campaign_id or default_campaign_id(template or "-", recipients)
        self.suppressed = load_suppressions(suppress)
        self.sender: Mailbox | None = settings.sender_mailbox if need_sender else None
        # DKIM (MAILER_DKIM_KEY): a bad key is a settings error before anything is checked
        self.signer = settings.signer(self.sender.domain) if self.sender is not None else None
        self.event: Event | None = None
        self.uid = ""
        self.keeps_calendars = False  # the template that holds event.toml (not a reminder)
        self.sequence = 0  # the event version this run sends (see use_version)
        self.versions: dict[int, dict[str, str]] = {}
        self.templates: TemplateFolder | None = None
        self.renderer: Renderer | None = None
        self.factory: MessageFactory | None = None
        self.where_text = list(where)
        self.where: list[Any] = []
        self.answers: dict[str, str] = {}  # key → accepted, declined, tentative (the inbox)
        self.store = AttachmentStore(attachments_dir or recipients.parent)
        self.common: list[Attachment] = []  # --attach: on every message
        for path in attach:
            try:
                self.common.append(self.store.given(path))
            except AttachmentError as exc:
                raise InputError(f"{path}: {exc}") from None
        self.bounced: set[str] = set()
        self.unsubscribed: set[str] = set()  # by mail (the inbox), not by a file
        self.secret = b""  # the journal's: the key of the MAC in every Message-ID
        if template is None:
            self._compile_where()
            return
        from .calendar import find_event
        from .render import Renderer
        from .templates import TemplateFolder

        templates_dir = settings.templates_dir
        folder = templates_dir / template
        if folder.is_dir():
            found = find_event(folder, templates_dir)
            if found is not None:
                self.event, holder = found
                self.keeps_calendars = holder == folder
                organizer = self.event.organizer_mailbox
                domain = organizer.domain if organizer else \
                    self.sender.domain if self.sender else "mailer.invalid"
                name = holder.relative_to(templates_dir).as_posix()
                self.uid = self.event.stable_uid(name, domain)
                self.sequence = self.event.sequence
        inline: list[Attachment] = []
        self.templates = TemplateFolder(templates_dir, template, variables=variables,
                                        default_language=settings.language,
                                        extra=self.event_context())
        logo = self.templates.logo()
        if "logo_url" in variables:  # a logo on the web, by --var logo_url=https://...
            self.templates.extra["logo"] = variables["logo_url"]
        elif logo is not None:  # sent inline, so it shows without "load remote images"
            image = self.store.given(logo)
            inline.append(image)
            self.templates.extra["logo"] = f"cid:{content_id(image.filename)}"
        else:
            self.templates.extra["logo"] = None
        self.renderer = Renderer(self.templates, settings.unsubscribe_url)
        if self.event is not None and self.event.method == "request" \
                and not self.event.cancelled:
            self.renderer.links = self._links
        if self.sender is not None:
            self.factory = MessageFactory(self.sender, settings.reply_to_mailbox,
                                          unsubscribe_mailto=settings.unsubscribe_mailto,
                                          inline=inline)
        self._compile_where()

    # Attachments -----------------------------------------------------------------------

    def files_for(self, recipient: Recipient) -> list[Attachment]:
        """--attach files and the guest's own (AttachmentError for a bad cell)."""
        column = self.listing.attachment_column
        if column is None or column >= len(recipient.row) or not recipient.row[column].strip():
            return self.common
        return [*self.common, *self.store.from_list(recipient.row[column])]

    # --where ---------------------------------------------------------------------------

    def _compile_where(self) -> None:
        if not self.where_text:
            return
        import jinja2

        from .templates import make_environment

        env = self.templates.env if self.templates is not None else \
            make_environment(self.settings.templates_dir)
        for text in self.where_text:
            try:
                self.where.append(env.compile_expression(text, undefined_to_none=False))
            except jinja2.TemplateSyntaxError as exc:
                raise UsageProblem(f"--where {text!r}: {exc.message}") from None

    def use_knowledge(self, knowledge: Knowledge) -> None:
        """What the journal knows: answers to this campaign's event, bounced addresses,
        addresses never to mail again (bounces, unsubscribes), and the event version this
        run sends."""
        self.answers = knowledge.answers
        self.bounced = knowledge.bounced
        self.secret = knowledge.secret
        # an unsubscribe by mail still lets service messages through (plan.decide); a
        # suppression file never does
        self.unsubscribed = knowledge.unsubscribed - self.suppressed
        self.suppressed = self.suppressed | knowledge.suppressed
        if knowledge.sequence is not None:
            self.sequence, self.versions = knowledge.sequence, knowledge.versions

    def matches(self, recipient: Recipient) -> bool:
        """Whether a guest passes every --where (always, without one)."""
        if not self.where:
            return True
        from .templates import describe_error, top_level

        if self.renderer is not None:
            ctx = self.renderer.context(recipient, recipient.language or
                                        self.settings.language)
        else:
            ctx = {k: v for k, v in recipient.fields.items() if top_level(k)}
            ctx.update(email=recipient.email, name=recipient.name, recipient=recipient.fields)
        key = recipient.address.key
        ctx.update(answer=self.answers.get(key), bounced=key in self.bounced)
        try:
            return all(bool(expression(**ctx)) for expression in self.where)
        except Exception as exc:
            raise InputError(f"--where on line {recipient.line}: {describe_error(exc)}"
                             ) from None

    # The event ------------------------------------------------------------------------

    def event_context(self, kind: Kind = Kind.INVITATION, held: int | None = None
                       ) -> dict[str, Any]:
        """``event``, ``update``, ``changes`` and ``cancelled`` for the templates."""
        if self.event is None:
            return {"event": None, "update": False, "changes": [], "cancelled": False,
                    "removed": False, "rsvp": None}
        from .calendar import EventContext, changed_fields

        old = self.versions.get(held) if held is not None else None
        changes = changed_fields(old, self.event.shown()) if kind is Kind.UPDATE else []
        return {"event": EventContext(self.event, self.sequence),
                "update": kind is Kind.UPDATE, "changes": changes,
                "cancelled": kind is Kind.CANCELLATION, "removed": False, "rsvp": None}

    def _links(self, recipient: Recipient, lang: str) -> Links:
        """The answer links of one guest (``rsvp`` in the templates)."""
        from .rsvp import Links

        assert self.event is not None
        organizer = self.event.organizer_mailbox
        to = self.settings.rsvp_mailto or (organizer.address.normalized if organizer else "")
        return Links(self.settings.rsvp_key(self.secret), self.uid, recipient.address.key,
                     to, self.event.summary, lang)

    @property
    def event_run(self) -> EventRun | None:
        if self.event is None:
            return None
        return EventRun(self.uid, self.sequence, self.event.cancelled, self.keeps_calendars)

    # Streaming the list ---------------------------------------------------------------

    def check(self, *, mail_clients: bool = False, planner: Planner | None = None,
              visit: Visit | None = None) -> CheckReport:
        """The one pass over the list: validate every row and (with a template) render
        every message, keeping nothing but the problems. With a ``planner``, ask it what
        each guest gets (and render for that); ``visit`` is given every valid guest with
        the plan's word, its rendered parts (None for a suppressed guest, or when there
        is no template) and its files, while the list is read."""
        report = CheckReport(self.listing.display, matching=0 if self.where else None)
        # Without a template, a filter, a plan or a visitor, a check needs no Recipient
        # objects for plain rows: the list is read in bulk where it can be.
        bulk = self.renderer is None and planner is None and visit is None and not self.where
        items = self.listing.scan(bulk=bulk)
        first = next(items, None)  # reads the header row: the columns are known from here
        one = _Pass(self, report, planner, visit, mail_clients)
        if first is not None:
            items = itertools.chain((first,), items)
        for item in items:
            if isinstance(item, Plain):
                one.plain(item)
            elif isinstance(item, Problem):
                one.rows += 1
                (report.warnings if item.warning else report.problems).append(str(item))
            else:
                one.guest(item)
        report.rows, report.recipients = one.rows, one.recipients
        return report

    def build(self, recipient: Recipient, kind: Kind | None = None, held: int | None = None,
              *, to: Mailbox | None = None, keep_rendered: bool = False,
              removed: bool = False) -> Outgoing:
        """Render and build the message of one guest: ``kind`` as the plan said (default:
        what the campaign sends a new guest), ``held`` the event version their calendar
        holds; ``to`` replaces the guest in the envelope and To header (a test send)."""
        kind = kind or (Kind.MESSAGE if self.event is None else
                        Kind.CANCELLATION if self.event.cancelled else Kind.INVITATION)
        assert self.renderer is not None
        context = self.event_context(kind, held) if self.event is not None else None
        if context is not None:
            context["removed"] = removed  # a cancellation for a guest taken off the list
        rendered = self.renderer.render(recipient, context)
        return self.assemble(recipient, rendered, kind, self.files_for(recipient),
                             keep_rendered=keep_rendered, to=to)

    def assemble(self, recipient: Recipient, rendered: Rendered, kind: Kind,
                 files: list[Attachment], *, keep_rendered: bool = False,
                 to: Mailbox | None = None) -> Outgoing:
        """The message of one guest from its rendered parts (not yet finished: the queue
        gives it its Date and wire form when it leaves)."""
        assert self.factory is not None
        mailbox = to or Mailbox(recipient.name, recipient.address)
        # For an event, one Message-ID per version and kind: an update is a new message,
        # a resend is not.
        scope = self.id if self.event is None else f"{self.id}\x00{self.sequence}\x00{kind}"
        msgid = message_id(scope, recipient.address.key if to is None
                           else f"test:{mailbox.address.key}", self.factory.domain,
                           self.secret)
        invitation = self._invitation(kind, mailbox)
        data = self.factory.build(rendered, mailbox, msgid, calendar=invitation, files=files)
        holds = None if self.event is None or to is not None else \
            (self.uid, self.sequence, kind is Kind.CANCELLATION)
        return Outgoing(line=recipient.line, key=recipient.address.key,
                        email=mailbox.address.normalized, name=mailbox.name,
                        envelope_from=self.factory.sender.address.ascii,
                        envelope_to=mailbox.address.ascii, message_id=msgid, data=data,
                        wire=b"", subject=rendered.subject, lang=rendered.lang,
                        rendered=rendered if keep_rendered else None, kind=kind, holds=holds,
                        files=tuple((a.filename, a.source) for a in files))

    def _invitation(self, kind: Kind, attendee: Mailbox) -> Invitation | None:
        event = self.event
        if event is None:
            return None
        from .calendar import to_ics

        method = "CANCEL" if kind is Kind.CANCELLATION else \
            "PUBLISH" if event.method == "publish" else "REQUEST"
        return Invitation(to_ics(event, self.uid, self.sequence, method, attendee), method)

    @property
    def attachments(self) -> list[str]:
        from .calendar import ICS_FILENAME

        return [ICS_FILENAME] if self.event is not None else []  # the rest: per message


class _Pass:
    """One check of a list (``Campaign.check``): what its rows share, and what each kind
    of item of the list does to the report."""

    def __init__(self, campaign: Campaign, report: CheckReport, planner: Planner | None,
                 visit: Visit | None, mail_clients: bool) -> None:
        self.campaign, self.report, self.planner, self.visit = campaign, report, planner, visit
        self.mail_clients = mail_clients
        self.rows = self.recipients = 0
        self.default = campaign.settings.language
        self.known: set[str] = set(KNOWN_LANGUAGES)
        self.subject_uses: set[str] = set()
        missing: list[str] = []
        templates = campaign.templates
        if templates is not None:
            missing = templates.missing_variables(campaign.listing.headers)
            report.problems.extend(missing)
            self.subject_uses = templates.subject_variables()
            self.known |= {lang or self.default for lang in templates.variants}
        report.fallback_language = self.default
        event = campaign.event
        if event is not None and event.starts < datetime.now(UTC):
            report.warnings.append(
                f"{campaign.settings.templates_dir / (campaign.template or '')}: warning: the "
                f"event started {event.starts:%Y-%m-%d %H:%M} ({event.timezone}): is "
                f"event.toml up to date?")
        self.own_files = campaign.listing.attachment_column is not None  # else --attach only
        self.renderer = None if missing else campaign.renderer

    def _unknown_language(self, line: int, language: str | None) -> None:
        why = language_warning(language, self.known, self.default)
        if why is not None:
            self.report.fallback += 1
            self.report.warnings.append(str(Problem(self.report.path, line, why, True)))

    def plain(self, item: Plain) -> None:
        """Valid, unique rows read in bulk (a check of a list alone)."""
        self.rows += len(item.keys)
        self.recipients += len(item.keys)
        self.report.suppressed += len(self.campaign.suppressed.intersection(item.keys))
        if item.languages is not None \
                and not self.known.issuperset(filter(None, item.languages)):
            for line, language in enumerate(item.languages, item.line):
                self._unknown_language(line, language)

    def guest(self, item: Recipient) -> None:
        """A valid, unique guest: the row's checks, the plan's word, then the message."""
        report, campaign = self.report, self.campaign
        self.rows += 1
        self.recipients += 1
        self._unknown_language(item.line, item.language)
        for column in item.multiline:
            if column in self.subject_uses:
                report.problems.append(str(Problem(
                    report.path, item.line, f"column '{column}' holds a line break and the "
                                            f"subject uses it")))
        key = item.address.key
        is_suppressed = key in campaign.suppressed
        unsubscribed = is_suppressed and key in campaign.unsubscribed
        matches = True
        if campaign.where and (not is_suppressed or unsubscribed):
            try:
                matches = campaign.matches(item)
            except InputError as exc:
                report.problems.append(str(exc))
            report.matching = (report.matching or 0) + matches
        decision = None if self.planner is None else \
            self.planner.decide(item, suppressed=is_suppressed and not unsubscribed,
                                unsubscribed=unsubscribed, matches=matches)
        if is_suppressed:
            report.suppressed += 1
        if is_suppressed and (decision is None or decision.kind is None):
            if self.visit is not None:  # the plan's rule decides; without a plan: nothing
                self.visit(item, decision, None, [])
            return
        try:
            files = campaign.files_for(item) if self.own_files else campaign.common
        except AttachmentError as exc:
            report.problems.append(str(Problem(report.path, item.line, str(exc))))
            return
        if self.renderer is None:
            if self.visit is not None:
                self.visit(item, decision, None, files)
            return
        self._render(item, decision, files)

    def _render(self, item: Recipient, decision: Decision | None,
                files: list[Attachment]) -> None:
        """Render one guest's message as the plan says, check its size and (once per
        language) its HTML, and hand it to the visitor while the list is still good."""
        report, campaign = self.report, self.campaign
        assert self.renderer is not None
        kind = decision.kind if decision is not None else None
        try:
            rendered = self.renderer.render(
                item, None if campaign.event is None or kind is None or decision is None
                else campaign.event_context(kind, decision.held))
        except TemplateError as exc:
            text = str(exc).replace(f" (recipient on line {item.line})", "")
            report.template_errors.setdefault(text, []).append(item.line)
            return
        size = encoded_size(files) + 2 * (len(rendered.text or "") + len(rendered.html or ""))
        if size > WARN_BYTES:  # (MAX_BYTES is larger)
            what = f"the message is about {size / 1024 / 1024:.1f} MB"
            if size > MAX_BYTES:
                report.problems.append(str(Problem(
                    report.path, item.line, f"{what}: over the 25 MB most providers accept")))
            else:
                report.warnings.append(str(Problem(
                    report.path, item.line, f"{what}: over 10 MB, some servers refuse it",
                    True)))
        if self.visit is not None and report.ok:  # after an error, only the check goes on
            self.visit(item, decision, rendered, files)
        if self.mail_clients and rendered.html is not None \
                and rendered.lang not in report.languages:
            where = campaign.settings.templates_dir / (campaign.template or "")
            report.warnings.extend(f"{where}: warning: {rendered.lang}: {problem}"
                                   for problem in check_html(rendered.html))
        report.languages[rendered.lang] = report.languages.get(rendered.lang, 0) + 1
