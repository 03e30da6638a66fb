// Small formatting helpers shared by the views.

/** Seconds left as `4:05`, `1:02:03`, or `expired`. */
export function countdown(secs: number): string {
  if (secs <= 0) return "expired";
  const h = Math.floor(secs / 3600);
  const m = Math.floor((secs % 3600) / 60);
  const s = Math.floor(secs % 60);
  const pad = (n: number) => String(n).padStart(2, "0");
  return h > 0 ? `${h}:${pad(m)}:${pad(s)}` : `${m}:${pad(s)}`;
}

/** An RFC 3339 time as a local clock time (`14:05:09`), or the date too when not today. */
export function clock(rfc3339: string | null | undefined, now: Date = new Date()): string {
  if (!rfc3339) return "";
  const t = new Date(rfc3339);
  if (Number.isNaN(t.getTime())) return rfc3339;
  const time = t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  return t.toDateString() === now.toDateString() ? time : `${t.toLocaleDateString()} ${time}`;
}

/** Rows as `12`, `1,204`, `~2.4M`, or `unknown`. */
export function rows(n: number | null | undefined): string {
  if (n === null || n === undefined) return "unknown";
  if (n >= 1_000_000) return `~${(n / 1_000_000).toFixed(1)}M`;
  return n.toLocaleString("en-US");
}

/** `1 approver` / `2 approvers`. */
export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}
