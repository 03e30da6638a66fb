// The session player: a recorded session frame by frame. Frames are fetched
// in pages and the frame list is virtualised (only the rows in view exist),
// so a 100k-frame session opens as fast as a short one. The timeline shows
// the session's markers (refusals, approvals, masking, errors, cancels);
// playback follows the recorded timing with idle gaps capped.

import type { Frame, FramePage, Marker, MarkerList, SearchResult, SessionDetail } from "./generated/types";
import { clock, plural } from "./format";
import { h } from "./dom";
import { highlight } from "./sql";

/** Frames per fetched page. */
export const PAGE = 200;
/** Height of one row of the frame list, in pixels (fixed: the list is virtual). */
export const ROW = 30;
/** The longest pause playback makes between two frames, at 1x. */
export const IDLE_CAP_MS = 2000;
export const SPEEDS = [1, 4, 16] as const;
export type Speed = (typeof SPEEDS)[number];

/** Where the player gets a session's data (the core, through platform.ts). */
export interface PlayerSource {
  session(id: string): Promise<SessionDetail>;
  frames(id: string, after: number, limit: number): Promise<FramePage>;
  markers(id: string): Promise<MarkerList>;
  search(id: string, q: string): Promise<SearchResult>;
}

export interface PlayerHandlers {
  copy(text: string, what: string): void;
  error(message: string): void;
  back(): void;
}

/** The pause before showing `next` after `current`, at `speed`. */
export function playDelay(current: Frame, next: Frame, speed: number): number {
  const gap = Math.max(0, (next.at_us - current.at_us) / 1000);
  return Math.min(gap, IDLE_CAP_MS) / speed;
}

/** The rows to render for a scroll position: [first, last) with overscan. */
export function visibleRange(scrollTop: number, height: number, total: number, overscan = 10): [number, number] {
  const first = Math.max(0, Math.floor(scrollTop / ROW) - overscan);
  const last = Math.min(total, Math.ceil((scrollTop + height) / ROW) + overscan);
  return [first, Math.max(first, last)];
}

/** The marker after (dir 1) or before (dir -1) frame `seq`. */
export function nearMarker(markers: Marker[], seq: number, dir: 1 | -1): Marker | null {
  if (dir > 0) return markers.find((m) => m.seq > seq) ?? null;
  for (let i = markers.length - 1; i >= 0; i -= 1) if (markers[i].seq < seq) return markers[i];
  return null;
}

/** A link to a frame, which the console opens there. */
export function frameLink(session: string, seq: number): string {
  return `tollgate://session/${encodeURIComponent(session)}?frame=${seq}`;
}

/** A frame link's session and frame, or null. */
export function parseLink(link: string): { session: string; frame: number } | null {
  const m = /^tollgate:\/\/session\/([A-Za-z0-9_-]{1,64})(?:\?frame=(\d{1,9}))?$/.exec(link.trim());
  if (!m) return null;
  return { session: m[1], frame: m[2] ? Number(m[2]) : 0 };
}

/** Time since the session started, as `+1:02.345`. */
export function offset(atUs: number): string {
  const ms = Math.floor(atUs / 1000);
  const m = Math.floor(ms / 60000);
  const s = Math.floor((ms % 60000) / 1000);
  return `+${m}:${String(s).padStart(2, "0")}.${String(ms % 1000).padStart(3, "0")}`;
}

const MARK_LABEL: Record<string, string> = {
  refused: "Refused",
  approved: "Approved",
  denied: "Denied",
  unanswered: "Not decided",
  masked: "Masked",
  error: "Error",
  cancel: "Cancel",
};

/** The mark a frame gets on the timeline, as the gateway classifies it. */
export function markOf(frame: Frame): string | null {
  const b = frame.body;
  switch (frame.kind) {
    case "statement": {
      const refused = b.decision === "refused";
      if ((b.approval_state === "approved" || b.approval_state === "granted") && !refused) return "approved";
      if (b.approval_state === "denied") return "denied";
      if (b.approval_state === "expired" || b.approval_state === "withdrawn") return "unanswered";
      return refused ? "refused" : null;
    }
    case "result":
      return (b.masked ?? 0) > 0 ? "masked" : null;
    case "error":
      return "error";
    case "cancel":
      return "cancel";
    default:
      return null;
  }
}

/** One line about a frame, for the list. */
export function summaryOf(frame: Frame): string {
  const b = frame.body;
  switch (frame.kind) {
    case "connect":
      return `Connected as ${b.identity?.subject ?? "?"}${b.application_name ? ` with ${b.application_name}` : ""}${b.tls ? " (TLS)" : ""}`;
    case "statement":
      return String(b.text ?? "").replace(/\s+/g, " ");
    case "result": {
      const parts = [b.tag ?? (b.copy ? "COPY" : "result"), plural(Number(b.rows ?? 0), "row")];
      if (b.duration_us !== undefined) parts.push(`${(Number(b.duration_us) / 1000).toFixed(1)} ms`);
      return parts.join(" · ");
    }
    case "error":
      return `${b.sqlstate ?? ""} ${b.message ?? ""}`.trim();
    case "cancel":
      return "The client asked to cancel";
    case "masking":
      return `Masked in this session: ${(b.masked ?? []).map((m: { place: string; count: number }) => `${m.count} in ${m.place}`).join(", ")}`;
    case "disconnect":
      return `Disconnected${b.reason ? `: ${b.reason}` : ""}`;
    default:
      return frame.kind;
  }
}

function decisionChip(frame: Frame): HTMLElement | null {
  if (frame.kind !== "statement") return null;
  const mark = markOf(frame);
  const b = frame.body;
  if (mark === "approved") return h("span", { class: "chip chip-ok" }, `Approved by ${(b.approved_by ?? []).join(", ") || "?"}`);
  if (mark === "denied") return h("span", { class: "chip chip-bad" }, `Denied by ${(b.approved_by ?? []).join(", ") || "?"}`);
  if (mark === "refused" || mark === "unanswered") return h("span", { class: "chip chip-bad" }, "Refused");
  return null;
}

/** The detail of one frame, in the protocol's own terms. */
export function frameDetail(frame: Frame, previews: boolean, roles: string[]): HTMLElement {
  const b = frame.body;
  const field = (label: string, ...value: (Node | string | null)[]) =>
    h("div", { class: "field" }, h("dt", {}, label), h("dd", {}, ...value));
  const head = h(
    "header",
    { class: "detail-head" },
    h("h2", {}, `${frame.kind[0].toUpperCase()}${frame.kind.slice(1)} #${frame.seq}`),
    h("span", { class: "muted" }, offset(frame.at_us)),
  );
  const out = h("div", { class: "details", "data-test": "frame-detail", "data-kind": frame.kind }, head);
  if (frame.kind === "statement") {
    const sql = h("pre", { class: "sql", "data-test": "frame-sql" });
    highlight(String(b.text ?? ""), sql);
    out.append(sql);
    const mark = markOf(frame);
    out.append(
      h(
        "dl",
        { class: "fields" },
        field(
          "Decision",
          h("span", { class: `outcome outcome-${b.decision === "refused" ? "denied" : "approved"}`, "data-test": "frame-decision" }, b.decision === "refused" ? "Refused" : "Allowed"),
          " ",
          decisionChip(frame),
        ),
        b.policy ? field("Policy", h("code", {}, String(b.policy))) : null,
        b.message ? field("Told the client", h("span", {}, `${b.sqlstate ? `${b.sqlstate}: ` : ""}${b.message}`)) : null,
        b.approval
          ? field(
              "Approval",
              h("code", {}, String(b.approval)),
              ` ${b.approval_state ?? ""}`,
              mark === "approved" || mark === "denied" ? ` by ${(b.approved_by ?? []).join(", ")}` : "",
              b.grant ? h("span", { class: "muted" }, ` (window grant ${b.grant})`) : null,
            )
          : null,
        (b.actions ?? []).length ? field("Actions", (b.actions as string[]).join(", ")) : null,
        (b.resources ?? []).length
          ? field("Touches", h("ul", { class: "resources" }, ...(b.resources as string[]).map((r) => h("li", {}, r))))
          : null,
        b.cardholder ? field("Card data", h("span", { class: "chip chip-card" }, "touches cardholder data")) : null,
        b.prepared !== undefined ? field("Prepared", h("code", {}, String(b.prepared || "(unnamed)"))) : null,
        b.audit_seq !== undefined ? field("Audit record", `#${b.audit_seq}`) : null,
      ),
    );
  } else if (frame.kind === "result") {
    const columns: string[] = b.columns ?? [];
    out.append(
      h(
        "dl",
        { class: "fields" },
        field("Command", String(b.tag ?? (b.copy ? "COPY" : "—"))),
        field("Rows", `${Number(b.rows ?? 0).toLocaleString("en-US")} (${Number(b.bytes ?? 0).toLocaleString("en-US")} bytes)`),
        b.duration_us !== undefined ? field("Duration", `${(Number(b.duration_us) / 1000).toFixed(2)} ms`) : null,
        field("Masked", (b.masked ?? 0) > 0 ? h("span", { class: "chip chip-card" }, `${b.masked} values`) : "none"),
        b.hmac_sha256 ? field("Digest", h("code", { class: "muted" }, String(b.hmac_sha256))) : null,
      ),
    );
    if (!previews || b.withheld) {
      out.append(
        h(
          "div",
          { class: "withheld", "data-test": "withheld" },
          h("strong", {}, "Result rows withheld. "),
          `Your role${roles.length ? ` (${roles.join(", ")})` : ""} sees what ran, the decision and the counts; analysts see masked previews of the rows.`,
        ),
      );
    } else {
      const preview: unknown[][] = b.preview ?? [];
      if (preview.length === 0) {
        out.append(h("p", { class: "muted" }, "No rows."));
      } else {
        const width = Math.max(columns.length, preview[0]?.length ?? 0);
        const names = columns.length ? columns : Array.from({ length: width }, (_, i) => (b.copy ? "copy row" : `column ${i + 1}`));
        const table = h(
          "table",
          { class: "grid", "data-test": "result-grid" },
          h("thead", {}, h("tr", {}, ...names.map((c) => h("th", {}, c)))),
          h(
            "tbody",
            {},
            ...preview.map((row) =>
              h("tr", {}, ...row.map((v) => h("td", { class: v === null ? "null" : "" }, v === null ? "NULL" : String(v)))),
            ),
          ),
        );
        out.append(h("div", { class: "grid-wrap" }, table));
        if (!b.preview_complete) {
          out.append(h("p", { class: "muted" }, `The recording keeps the first ${plural(preview.length, "row")} of ${Number(b.rows).toLocaleString("en-US")}, masked.`));
        }
      }
    }
  } else {
    const rows = Object.entries(b).map(([k, v]) => field(k, typeof v === "string" ? v : JSON.stringify(v)));
    out.append(h("dl", { class: "fields" }, ...rows));
  }
  return out;
}

/** The player of one session. */
export class Player {
  private detail: SessionDetail | null = null;
  private id = "";
  private total = 0;
  private current = 0;
  private pages = new Map<number, Frame[]>();
  private loading = new Map<number, Promise<Frame[]>>();
  private markers: Marker[] = [];
  private matches: number[] = [];
  private match = -1;
  private speed: Speed = 1;
  private timer: number | null = null;
  private playing = false;
  private rendered = new Map<number, HTMLElement>();
  private frameEl: HTMLElement;
  private scroll: HTMLElement;
  private spacer: HTMLElement;
  private timeline: HTMLElement;
  private cursor: HTMLElement;
  private head: HTMLElement;
  private position: HTMLElement;
  private playButton: HTMLButtonElement;
  private searchBox: HTMLInputElement;
  private searchInfo: HTMLElement;
  private generation = 0;
  private roles: string[] = [];
  private headActions: HTMLElement;

  constructor(
    private readonly root: HTMLElement,
    private readonly source: PlayerSource,
    private readonly handlers: PlayerHandlers,
  ) {
    this.head = h("div", { class: "player-head", "data-test": "player-head" });
    this.timeline = h("div", { class: "timeline", "data-test": "timeline", title: "Click to jump" });
    this.cursor = h("div", { class: "timeline-cursor" });
    this.timeline.append(this.cursor);
    this.timeline.addEventListener("click", (e) => {
      const box = this.timeline.getBoundingClientRect();
      if (box.width > 0 && this.total > 0) void this.seek(Math.round(((e.clientX - box.left) / box.width) * (this.total - 1)));
    });
    const button = (label: string, title: string, test: string, action: () => void) => {
      const b = h("button", { title, "data-test": test }, label);
      b.addEventListener("click", action);
      return b;
    };
    this.playButton = button("Play", "Play or pause (Space)", "play", () => this.toggle());
    const speeds = h("div", { class: "speeds", role: "group" });
    for (const s of SPEEDS) {
      const b = button(`${s}x`, `Play at ${s}x the recorded pace`, `speed-${s}`, () => this.setSpeed(s));
      b.dataset.speed = String(s);
      speeds.append(b);
    }
    this.position = h("span", { class: "position", "data-test": "position" });
    this.searchBox = h("input", { type: "text", placeholder: "Find in this session", "data-test": "player-search" }) as HTMLInputElement;
    this.searchInfo = h("span", { class: "muted search-info", "data-test": "search-info" });
    this.searchBox.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        void this.find(e.shiftKey ? -1 : 1);
      }
      e.stopPropagation();
    });
    this.headActions = h(
      "div",
      { class: "buttons head-actions" },
      button("◀ Sessions", "Back to the session list", "back", () => {
        this.pause();
        this.handlers.back();
      }),
      button("Copy link", "Copy a link that opens the console at this frame", "copy-link", () =>
        this.handlers.copy(frameLink(this.id, this.current), "Link to this frame"),
      ),
    );
    const controls = h(
      "div",
      { class: "controls" },
      button("◀◀", "Previous marker ([)", "prev-marker", () => void this.jumpMarker(-1)),
      button("◀", "Step back one frame (←)", "step-back", () => void this.seek(this.current - 1)),
      this.playButton,
      button("▶", "Step forward one frame (→)", "step-forward", () => void this.seek(this.current + 1)),
      button("▶▶", "Next marker (])", "next-marker", () => void this.jumpMarker(1)),
      speeds,
      this.position,
      h("span", { class: "spacer-flex" }),
      this.searchBox,
      this.searchInfo,
    );
    this.spacer = h("div", { class: "frames-spacer" });
    this.scroll = h("div", { class: "frames-scroll", "data-test": "frame-list", tabindex: "0" }, this.spacer);
    this.scroll.addEventListener("scroll", () => this.renderRows());
    this.frameEl = h("div", { class: "pane frame-pane" });
    root.replaceChildren(
      this.head,
      controls,
      this.timeline,
      h("div", { class: "player-body" }, h("div", { class: "pane frames-pane" }, this.scroll), this.frameEl),
    );
    this.setSpeed(1);
  }

  /** Open session `id` at frame `at`. */
  async open(id: string, at = 0): Promise<void> {
    this.pause();
    this.generation += 1;
    const generation = this.generation;
    this.id = id;
    this.pages.clear();
    this.loading.clear();
    this.matches = [];
    this.match = -1;
    this.searchBox.value = "";
    this.searchInfo.textContent = "";
    this.head.replaceChildren(this.headActions, h("div", { class: "progress" }, h("span", { class: "spinner" }), "Opening the session…"));
    this.frameEl.replaceChildren();
    const [detail, markers] = await Promise.all([this.source.session(id), this.source.markers(id)]);
    if (generation !== this.generation) return;
    this.detail = detail;
    this.markers = markers.markers;
    this.total = detail.last_frame ? detail.last_frame.seq + 1 : 0;
    this.spacer.style.height = `${this.total * ROW}px`;
    for (const el of this.rendered.values()) el.remove();
    this.rendered.clear();
    this.renderHead(markers.truncated);
    this.renderTimeline();
    await this.seek(Math.min(at, Math.max(0, this.total - 1)), true);
  }

  private renderHead(truncated: boolean): void {
    const d = this.detail;
    if (!d) return;
    const s = d.session;
    const chip = (n: number, label: string, cls: string) => (n > 0 ? h("span", { class: `chip ${cls}` }, `${n} ${label}`) : null);
    this.head.replaceChildren(
      this.headActions,
      h(
        "div",
        { class: "who" },
        h("span", { class: `kind kind-${s.kind}` }, s.kind === "agent" ? "Agent" : "Person"),
        h("strong", {}, s.subject),
        h("span", { class: "muted" }, `on ${s.connection} from ${s.client} · ${clock(s.started_at)}${s.ended_at ? ` to ${clock(s.ended_at)}` : " (live or cut off)"}`),
      ),
      h(
        "div",
        { class: "row-meta" },
        h("span", { class: "chip" }, plural(this.total, "frame")),
        h("span", { class: "chip" }, plural(s.statements, "statement")),
        chip(s.refused, "refused", "chip-bad"),
        chip(s.held, "held for approval", "chip-warn"),
        chip(s.masked, "values masked", "chip-card"),
        chip(s.errors, "errors", "chip-bad"),
        d.previews ? null : h("span", { class: "chip chip-warn", title: "The gateway withholds result rows from this role" }, "Result rows withheld"),
        truncated ? h("span", { class: "muted" }, "Only the first 10,000 markers are shown.") : null,
      ),
    );
  }

  private renderTimeline(): void {
    this.timeline.replaceChildren(this.cursor);
    const span = Math.max(1, this.total - 1);
    for (const m of this.markers) {
      const tick = h("span", {
        class: `tick tick-${m.mark}`,
        title: `${MARK_LABEL[m.mark] ?? m.mark} at frame ${m.seq} (${offset(m.at_us)})`,
        "data-test": "marker",
        "data-mark": m.mark,
        "data-seq": String(m.seq),
      });
      tick.style.left = `${(m.seq / span) * 100}%`;
      tick.addEventListener("click", (e) => {
        e.stopPropagation();
        void this.seek(m.seq);
      });
      this.timeline.append(tick);
    }
  }

  /** The page holding frame `seq`, fetched once. */
  private page(index: number): Promise<Frame[]> {
    const have = this.pages.get(index);
    if (have) return Promise.resolve(have);
    let pending = this.loading.get(index);
    if (!pending) {
      const generation = this.generation;
      pending = this.source.frames(this.id, index * PAGE - 1, PAGE).then((page) => {
        if (generation === this.generation) {
          this.pages.set(index, page.frames);
          this.loading.delete(index);
          this.renderRows();
        }
        return page.frames;
      });
      pending.catch((e) => {
        this.loading.delete(index);
        this.handlers.error(`Frames ${index * PAGE}–${index * PAGE + PAGE - 1} could not be fetched: ${e?.message ?? e}`);
      });
      this.loading.set(index, pending);
    }
    return pending;
  }

  private cached(seq: number): Frame | null {
    const page = this.pages.get(Math.floor(seq / PAGE));
    return page?.find((f) => f.seq === seq) ?? null;
  }

  private async frame(seq: number): Promise<Frame | null> {
    const frames = await this.page(Math.floor(seq / PAGE));
    return frames.find((f) => f.seq === seq) ?? null;
  }

  private renderRows(): void {
    const [first, last] = visibleRange(this.scroll.scrollTop, this.scroll.clientHeight || 600, this.total);
    for (const [seq, el] of this.rendered) {
      if (seq < first || seq >= last) {
        el.remove();
        this.rendered.delete(seq);
      }
    }
    for (let seq = first; seq < last; seq += 1) {
      const frame = this.cached(seq);
      const existing = this.rendered.get(seq);
      if (existing && (existing.dataset.loaded === "1" || !frame)) {
        existing.classList.toggle("current", seq === this.current);
        continue;
      }
      if (!frame) void this.page(Math.floor(seq / PAGE));
      const row = frame ? this.row(frame) : h("div", { class: "frame-row loading" }, h("span", { class: "seq" }, String(seq)), h("span", { class: "muted" }, "…"));
      row.style.top = `${seq * ROW}px`;
      row.classList.toggle("current", seq === this.current);
      existing?.remove();
      this.spacer.append(row);
      this.rendered.set(seq, row);
    }
  }

  private row(frame: Frame): HTMLElement {
    const mark = markOf(frame);
    const row = h(
      "div",
      { class: `frame-row kind-row-${frame.kind}${mark ? ` marked mark-${mark}` : ""}`, "data-seq": String(frame.seq), "data-test": "frame-row" },
      h("span", { class: "seq" }, String(frame.seq)),
      h("span", { class: "at muted" }, offset(frame.at_us)),
      h("span", { class: `frame-kind fk-${frame.kind}` }, frame.kind),
      h("span", { class: "frame-summary" }, summaryOf(frame)),
      mark ? h("span", { class: `chip mark-chip mark-${mark}` }, MARK_LABEL[mark] ?? mark) : null,
    );
    row.dataset.loaded = "1";
    row.addEventListener("click", () => void this.seek(frame.seq));
    return row;
  }

  /** Show frame `seq` (clamped), scrolling it into view. */
  async seek(seq: number, scroll = true): Promise<void> {
    if (this.total === 0) {
      this.frameEl.replaceChildren(h("div", { class: "empty" }, h("div", { class: "empty-title" }, "No frames"), h("p", {}, "This session recorded nothing yet.")));
      this.position.textContent = "0 / 0";
      return;
    }
    seq = Math.max(0, Math.min(this.total - 1, seq));
    this.current = seq;
    this.position.textContent = `${(seq + 1).toLocaleString("en-US")} / ${this.total.toLocaleString("en-US")}`;
    this.cursor.style.left = `${(seq / Math.max(1, this.total - 1)) * 100}%`;
    if (scroll) {
      const top = seq * ROW;
      const view = this.scroll.clientHeight || 600;
      if (top < this.scroll.scrollTop || top + ROW > this.scroll.scrollTop + view) {
        this.scroll.scrollTop = Math.max(0, top - view / 3);
      }
    }
    this.renderRows();
    const generation = this.generation;
    const frame = this.cached(seq) ?? (await this.frame(seq));
    if (generation !== this.generation || this.current !== seq) return;
    if (!frame) {
      this.frameEl.replaceChildren(h("p", { class: "muted details" }, `Frame ${seq} is not in the store.`));
      return;
    }
    this.frameEl.replaceChildren(frameDetail(frame, this.detail?.previews ?? false, this.roles));
    // Prefetch the next page while playing or stepping near its end.
    if (seq % PAGE > PAGE - 20) void this.page(Math.floor(seq / PAGE) + 1);
  }

  private async jumpMarker(dir: 1 | -1): Promise<void> {
    const m = nearMarker(this.markers, this.current, dir);
    if (m) await this.seek(m.seq);
  }

  private async find(dir: 1 | -1): Promise<void> {
    const q = this.searchBox.value.trim();
    if (!q) return;
    if (this.searchBox.dataset.q !== q) {
      this.searchBox.dataset.q = q;
      try {
        this.matches = (await this.source.search(this.id, q)).matches;
      } catch (e) {
        this.handlers.error(`Search failed: ${(e as { message?: string })?.message ?? e}`);
        return;
      }
      this.match = -1;
    }
    if (this.matches.length === 0) {
      this.searchInfo.textContent = "No match";
      return;
    }
    const next = dir > 0 ? this.matches.findIndex((s) => s > this.current) : this.matches.map((s) => s < this.current).lastIndexOf(true);
    this.match = next >= 0 ? next : dir > 0 ? 0 : this.matches.length - 1;
    this.searchInfo.textContent = `${this.match + 1} of ${this.matches.length}`;
    await this.seek(this.matches[this.match]);
  }

  /** The viewer's roles, for saying why rows are withheld. */
  setRoles(roles: string[]): void {
    this.roles = roles;
  }

  setSpeed(speed: Speed): void {
    this.speed = speed;
    for (const b of this.root.querySelectorAll<HTMLButtonElement>(".speeds button")) {
      b.classList.toggle("active", b.dataset.speed === String(speed));
    }
  }

  toggle(): void {
    if (this.playing) this.pause();
    else this.play();
  }

  play(): void {
    if (this.total === 0) return;
    if (this.current >= this.total - 1) void this.seek(0);
    this.playing = true;
    this.playButton.textContent = "Pause";
    this.playButton.classList.add("primary");
    void this.tickPlay();
  }

  pause(): void {
    this.playing = false;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.playButton.textContent = "Play";
    this.playButton.classList.remove("primary");
  }

  private async tickPlay(): Promise<void> {
    if (!this.playing) return;
    if (this.current >= this.total - 1) {
      this.pause();
      return;
    }
    const now = this.cached(this.current) ?? (await this.frame(this.current));
    const next = this.cached(this.current + 1) ?? (await this.frame(this.current + 1));
    if (!this.playing || !now || !next) return;
    this.timer = window.setTimeout(async () => {
      await this.seek(this.current + 1);
      void this.tickPlay();
    }, playDelay(now, next, this.speed));
  }

  /** Keyboard: ←/→ step, Space play, [ and ] markers, / find. */
  key(e: KeyboardEvent): boolean {
    if (e.target instanceof HTMLInputElement) return false;
    switch (e.key) {
      case "ArrowLeft":
        void this.seek(this.current - 1);
        return true;
      case "ArrowRight":
        void this.seek(this.current + 1);
        return true;
      case " ":
        this.toggle();
        return true;
      case "[":
        void this.jumpMarker(-1);
        return true;
      case "]":
        void this.jumpMarker(1);
        return true;
      case "/":
        this.searchBox.focus();
        return true;
      default:
        return false;
    }
  }

  /** The frame shown (for tests and the link). */
  at(): number {
    return this.current;
  }

  /** How many frame rows exist in the page now (virtualisation). */
  renderedRows(): number {
    return this.rendered.size;
  }
}
