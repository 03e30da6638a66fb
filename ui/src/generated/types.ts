// Generated from the Rust types by console-core/tests/typescript.rs; do not edit.
// Regenerate: TOLLGATE_WRITE_TYPES=1 cargo test -p tollgate-console-core --test typescript

export type PrincipalKind = "person" | "agent";

export type Requester = { 
/**
 * Token subject.
 */
subject: string, 
/**
 * Token issuer.
 */
issuer: string, 
/**
 * Groups from the token.
 */
groups: Array<string>, 
/**
 * Multi-factor authentication.
 */
mfa: boolean, 
/**
 * `person` or `agent`.
 */
kind: PrincipalKind, };

export type Vote = { 
/**
 * The approver's subject.
 */
approver: string, 
/**
 * The approver's issuer.
 */
issuer: string, 
/**
 * Why.
 */
reason: string, 
/**
 * When (RFC 3339).
 */
at: string, 
/**
 * The window asked for, in seconds (none: one-time).
 */
window_secs: number | null, };

export type GrantView = { 
/**
 * The grant id (`gr_...`).
 */
id: string, 
/**
 * The request that made it.
 */
request: string, 
/**
 * Whom it lets through.
 */
requester: Requester, 
/**
 * Where.
 */
connection: string, 
/**
 * Which accesses.
 */
accesses: Array<string>, 
/**
 * Who approved it.
 */
approved_by: Array<string>, 
/**
 * Approvers the request needed (the grant covers requests that need at most this many).
 */
approvals_needed: number, 
/**
 * When (RFC 3339).
 */
granted_at: string, 
/**
 * Until when.
 */
until: string, 
/**
 * Seconds left.
 */
remaining_secs: number, };

export type RequestView = { 
/**
 * The request id (`ap_...`).
 */
id: string, 
/**
 * `pending`, `approved`, `denied`, `expired` or `withdrawn`.
 */
state: string, 
/**
 * Who asks.
 */
requester: Requester, 
/**
 * The requester's address.
 */
origin: string, 
/**
 * The requester's session (its recording id).
 */
session: string | null, 
/**
 * The connection.
 */
connection: string, 
/**
 * The statement, literals replaced by `$n`.
 */
statement: string, 
/**
 * Kinds of access (`read`, `copy_out` ...).
 */
actions: Array<string>, 
/**
 * The accesses that need approval (what a grant covers).
 */
accesses: Array<string>, 
/**
 * Every table and column the statement touches.
 */
resources: Array<string>, 
/**
 * Those of `resources` that hold cardholder data (absent before 0.2).
 */
cardholder_resources: Array<string>, 
/**
 * It touches cardholder data.
 */
cardholder: boolean, 
/**
 * Rows the database estimates the statement returns, when known.
 */
row_estimate: number | null, 
/**
 * The policy that holds it.
 */
policy: string, 
/**
 * That policy's reason.
 */
policy_reason: string, 
/**
 * The requester's own reason.
 */
reason: string | null, 
/**
 * When it was asked (RFC 3339).
 */
requested_at: string, 
/**
 * The approvers whose consoles were sent it when it was asked (absent before 0.2).
 */
notified: Array<string>, 
/**
 * When it expires if nobody decides.
 */
expires_at: string, 
/**
 * Seconds left (0 once decided).
 */
expires_in_secs: number, 
/**
 * Distinct approvers needed.
 */
approvals_needed: number, 
/**
 * Approving votes so far.
 */
approvals: Array<Vote>, 
/**
 * Who decided (the last approver, or the one who denied).
 */
decided_by: string | null, 
/**
 * Their reason.
 */
decision_reason: string | null, 
/**
 * When it was decided, expired or withdrawn.
 */
decided_at: string | null, 
/**
 * The window grant an approval made, if any.
 */
grant: GrantView | null, };

export type ClientMessage = { "type": "auth", 
/**
 * An OIDC access token.
 */
token: string, } | { "type": "approve", 
/**
 * The request id.
 */
id: string, 
/**
 * Why.
 */
reason: string, 
/**
 * Approve for this many seconds instead of once.
 */
window_secs?: number | null, 
/**
 * Echoed in the answer.
 */
ref?: string, } | { "type": "deny", 
/**
 * The request id.
 */
id: string, 
/**
 * Why (the requester is told).
 */
reason: string, 
/**
 * Echoed in the answer.
 */
ref?: string, } | { "type": "revoke", 
/**
 * The grant id.
 */
grant: string, 
/**
 * Why.
 */
reason: string, 
/**
 * Echoed in the answer.
 */
ref?: string, } | { "type": "snapshot", 
/**
 * Echoed in the answer.
 */
ref?: string, } | { "type": "ping", 
/**
 * Echoed in the answer.
 */
ref?: string, };

export type ServerMessage = { "type": "hello", 
/**
 * Protocol version.
 */
version: number, 
/**
 * Who is connected (the token's subject).
 */
approver: string, 
/**
 * The token's issuer (absent before 0.2).
 */
issuer: string, 
/**
 * The connections whose requests this approver sees and decides (absent before 0.2).
 */
connections: Array<string>, 
/**
 * When the approver's token expires (RFC 3339); the connection
 * closes then.
 */
token_expires_at: string, } | { "type": "snapshot", 
/**
 * Requests: pending first (oldest first), then recently decided.
 */
requests: Array<RequestView>, 
/**
 * Grants in force.
 */
grants: Array<GrantView>, 
/**
 * Echo of the client's `ref`.
 */
ref?: string, } | { "type": "requested", 
/**
 * It.
 */
request: RequestView, } | { "type": "voted", 
/**
 * It.
 */
request: RequestView, } | { "type": "decided", 
/**
 * It.
 */
request: RequestView, } | { "type": "expired", 
/**
 * It.
 */
request: RequestView, } | { "type": "withdrawn", 
/**
 * It.
 */
request: RequestView, } | { "type": "grant_revoked", 
/**
 * It.
 */
grant: GrantView, } | { "type": "ack", 
/**
 * Echo of the client's `ref`.
 */
ref?: string, 
/**
 * The request as it now stands (after approve/deny).
 */
request?: RequestView, 
/**
 * The grant (after revoke).
 */
grant?: GrantView, } | { "type": "pong", 
/**
 * Echo of the client's `ref`.
 */
ref?: string, } | { "type": "error", 
/**
 * A stable code (`bad_message`, `not_found`, `self_approval` ...).
 */
code: string, 
/**
 * What is wrong and what to do.
 */
message: string, 
/**
 * Echo of the client's `ref`, when it could be read.
 */
ref?: string, };

export type ErrorView = { 
/**
 * A stable code.
 */
code: string, 
/**
 * What went wrong.
 */
message: string, 
/**
 * What to do next.
 */
hint: string, };

export type Persona = { 
/**
 * Token subject.
 */
subject: string, 
/**
 * Token groups.
 */
groups: Array<string>, 
/**
 * Signed in with MFA.
 */
mfa: boolean, 
/**
 * An agent rather than a person.
 */
agent: boolean, };

export type LocalInfo = { 
/**
 * `demo` (a throwaway, seeded database) or `upstream` (an existing one).
 */
mode: string, 
/**
 * The PostgreSQL listener (TLS), e.g. `127.0.0.1:6432`.
 */
listen: string, 
/**
 * The API (approvals WebSocket, recordings), e.g. `https://127.0.0.1:6433`.
 */
api: string, 
/**
 * The connection name clients put in `dbname`.
 */
connection: string, 
/**
 * What the gateway is in front of, without any password.
 */
upstream: string, 
/**
 * Tables the gateway treats as holding cardholder data.
 */
cardholder_tables: Array<string>, 
/**
 * The demo's payments MCP server behind the MCP listener (its
 * Streamable HTTP URL), when it runs.
 */
mcp: string | null, 
/**
 * Why the payments MCP server does not run, and what to do.
 */
mcp_note: string | null, 
/**
 * The gateway's data directory (audit log, recordings, dev issuer).
 */
data_dir: string, 
/**
 * The certificate clients can verify the gateway with.
 */
ca_file: string, 
/**
 * When it started (RFC 3339).
 */
started_at: string, 
/**
 * Client sessions open now.
 */
sessions: number, 
/**
 * What is wrong, when the database stopped answering (checked every 5 s).
 */
health: string | null, 
/**
 * Who the console's inbox is signed in as.
 */
approver: Persona, };

export type LocalStatus = { "state": "stopped" } | { "state": "starting", 
/**
 * The current step, for the progress line.
 */
step: string, } | { "state": "running", 
/**
 * Where and in front of what.
 */
info: LocalInfo, } | { "state": "stopping" } | { "state": "failed", 
/**
 * What went wrong and what to do next.
 */
error: ErrorView, };

export type LocalOptions = { 
/**
 * An existing database (`postgres://USER:PASS@HOST:PORT/DB`); none: a
 * throwaway one seeded with fake cardholder data.
 */
upstream?: string, 
/**
 * The PostgreSQL listener (default `127.0.0.1:6432`).
 */
listen?: string, 
/**
 * The API listener (default `127.0.0.1:6433`).
 */
api_listen?: string, 
/**
 * The MCP listener (default `127.0.0.1:6434`), in front of the demo's
 * payments MCP server.
 */
mcp_listen?: string, };

export type DevAccess = { 
/**
 * The persona.
 */
persona: Persona, 
/**
 * Its access token (one hour).
 */
token: string, 
/**
 * A psql command that connects through the local gateway with it.
 */
psql: string, };

export type Me = { 
/**
 * Token subject.
 */
subject: string, 
/**
 * Token issuer.
 */
issuer: string, 
/**
 * Connections whose requests they see and decide.
 */
connections: Array<string>, };

export type Link = { 
/**
 * `off` (no gateway), `connecting`, `live` (WebSocket), `polling`
 * (HTTP, while the WebSocket is unavailable), `down`, or `refused` (the
 * signed-in identity is not an approver there).
 */
state: string, 
/**
 * Why it is not live, and what the console does about it.
 */
detail: string | null, 
/**
 * The API's URL.
 */
url: string | null, };

export type InboxItem = { 
/**
 * The request as the gateway describes it.
 */
request: RequestView, 
/**
 * Why the signed-in approver cannot decide it, if they cannot.
 */
cannot_decide: string | null, };

export type InboxView = { 
/**
 * Who the inbox is signed in as, once the gateway said hello.
 */
me: Me | null, 
/**
 * The link to the gateway.
 */
link: Link, 
/**
 * Pending requests newest first, then recent decisions newest first.
 */
items: Array<InboxItem>, 
/**
 * Window grants in force.
 */
grants: Array<GrantView>, };

export type Decision = { 
/**
 * The request id.
 */
id: string, 
/**
 * Approve (else deny).
 */
approve: boolean, 
/**
 * Why (required; the requester is told).
 */
reason: string, 
/**
 * Approve for this many seconds instead of once.
 */
window_secs?: number | null, };

export type TrafficStatus = { 
/**
 * Running.
 */
running: boolean, 
/**
 * The agent it runs as.
 */
agent: string, 
/**
 * Ordinary queries run.
 */
queries: number, 
/**
 * Bulk exports asked for (the starter policy holds each).
 */
exports: number, 
/**
 * Exports released by an approver.
 */
released: number, 
/**
 * Exports refused (denied or expired).
 */
refused: number, 
/**
 * An export is waiting for approval now.
 */
waiting: boolean, 
/**
 * The last error, if the last query failed.
 */
last_error: string | null, };

export type SessionRow = { 
/**
 * Random 128-bit id, base64url.
 */
id: string, 
/**
 * Start, RFC 3339 UTC.
 */
started_at: string, 
/**
 * End, RFC 3339 UTC (absent while live or after a crash).
 */
ended_at: string | null, 
/**
 * Token subject.
 */
subject: string, 
/**
 * `person` or `agent`.
 */
kind: string, 
/**
 * Connection name.
 */
connection: string, 
/**
 * Client address.
 */
client: string, 
/**
 * The protocol the session spoke: `postgres` or `mcp`.
 */
protocol: string, };

export type SessionSummary = { 
/**
 * Start, Unix milliseconds.
 */
started_ms: number, 
/**
 * Statements decided.
 */
statements: number, 
/**
 * Of which refused.
 */
refused: number, 
/**
 * Of which held for approval (or let through by an approval's grant).
 */
held: number, 
/**
 * Values masked in its results.
 */
masked: number, 
/**
 * Errors from the upstream.
 */
errors: number, 
/**
 * Frames recorded.
 */
frames: number, 
/**
 * With a text search: the first statement that matched.
 */
matched?: Match, 
/**
 * Random 128-bit id, base64url.
 */
id: string, 
/**
 * Start, RFC 3339 UTC.
 */
started_at: string, 
/**
 * End, RFC 3339 UTC (absent while live or after a crash).
 */
ended_at: string | null, 
/**
 * Token subject.
 */
subject: string, 
/**
 * `person` or `agent`.
 */
kind: string, 
/**
 * Connection name.
 */
connection: string, 
/**
 * Client address.
 */
client: string, 
/**
 * The protocol the session spoke: `postgres` or `mcp`.
 */
protocol: string, };

export type Match = { 
/**
 * Its frame.
 */
seq: number, 
/**
 * Its recorded text.
 */
text: string, };

export type SessionPage = { 
/**
 * The sessions.
 */
sessions: Array<SessionSummary>, 
/**
 * Pass as `after` for the next page; none on the last.
 */
next: string | null, 
/**
 * Sessions that match in all (left out with a text search).
 */
total: number | null, };

export type Marker = { 
/**
 * The frame.
 */
seq: number, 
/**
 * Its time.
 */
at_us: number, 
/**
 * What happened (a [`Mark`] name).
 */
mark: string, };

export type Frame = { 
/**
 * Order within the session, from 0.
 */
seq: number, 
/**
 * Microseconds since the session started (monotonic clock).
 */
at_us: number, 
/**
 * `connect`, `statement`, `result`, `error`, `masking`, `cancel`, `disconnect`.
 */
kind: string, 
/**
 * The frame's fields (masked).
 */
body: Record<string, any>, };

export type SessionFilter = { 
/**
 * Started at or after (RFC 3339).
 */
from?: string, 
/**
 * Started before (RFC 3339).
 */
to?: string, 
/**
 * The identity contains this.
 */
subject?: string, 
/**
 * The connection.
 */
connection?: string, 
/**
 * `person` or `agent`.
 */
kind?: string, 
/**
 * `refused`, `held`, `masked` or `error`.
 */
outcome?: string, 
/**
 * Words a statement of the session has.
 */
q?: string, 
/**
 * `newest` (default) or `oldest`.
 */
order?: string, 
/**
 * The previous page's `next`.
 */
after?: string, 
/**
 * Sessions per page.
 */
limit?: number, };

export type SessionDetail = { 
/**
 * Its header and counts.
 */
session: SessionSummary, 
/**
 * Its last frame, if it has one.
 */
last_frame: FrameRef | null, 
/**
 * This viewer gets result rows (else they are withheld by role).
 */
previews: boolean, };

export type FrameRef = { 
/**
 * Its sequence number.
 */
seq: number, 
/**
 * Its time since the session started.
 */
at_us: number, };

export type FramePage = { 
/**
 * The frames, in order.
 */
frames: Array<Frame>, 
/**
 * Pass as `after` for the next page; none on the last.
 */
next_after: number | null, };

export type MarkerList = { 
/**
 * Marked frames, in order.
 */
markers: Array<Marker>, 
/**
 * More than the gateway sends at once.
 */
truncated: boolean, };

export type SearchResult = { 
/**
 * Their sequence numbers, in order.
 */
matches: Array<number>, 
/**
 * More than the gateway sends at once.
 */
truncated: boolean, };

export type RemoteSession = { 
/**
 * The gateway's API.
 */
gateway: string, 
/**
 * The OpenID Provider.
 */
issuer: string, 
/**
 * Who signed in.
 */
subject: string, 
/**
 * Their groups, as the gateway read them from the token.
 */
groups: Array<string>, 
/**
 * Their roles at the gateway (`auditor`, `analyst`).
 */
roles: Array<string>, 
/**
 * When the access token expires (RFC 3339); it is refreshed before.
 */
expires_at: string, 
/**
 * A refresh token is held (sign-in lasts without the browser).
 */
refreshable: boolean, 
/**
 * The tokens are in the OS keyring (else in memory, for this session only).
 */
in_keyring: boolean, };

export type RemoteStatus = { "state": "signed_out", 
/**
 * The gateway signed in to last time, to offer again.
 */
gateway: string | null, 
/**
 * Why the last sign-in ended, when it did not end by sign-out.
 */
reason: string | null, } | { "state": "signing_in", 
/**
 * The gateway.
 */
gateway: string, 
/**
 * What is happening.
 */
step: string, } | { "state": "signed_in", 
/**
 * Who, where, and with what roles.
 */
session: RemoteSession, };

export type SignInOptions = { 
/**
 * The gateway's API, `https://HOST:PORT`.
 */
gateway: string, 
/**
 * A CA certificate (PEM file) to trust for the gateway and the provider.
 */
ca_file?: string, 
/**
 * The OpenID Provider, when the gateway trusts several.
 */
issuer?: string, 
/**
 * Keep the tokens in memory only (no OS keyring here).
 */
session_only?: boolean, };

export type Viewer = { 
/**
 * `local` or `remote`.
 */
mode: string, 
/**
 * The gateway's API.
 */
gateway: string, 
/**
 * The identity.
 */
subject: string, 
/**
 * Its roles at the gateway (`auditor`, `analyst`).
 */
roles: Array<string>, };

export type AuditState = { 
/**
 * The gateway.
 */
gateway: string, 
/**
 * The log's name (the checkpoint's origin).
 */
origin: string, 
/**
 * Records the checkpoint covers.
 */
size: number, 
/**
 * Its Merkle root (base64).
 */
root: string, 
/**
 * When the gateway signed it (RFC 3339).
 */
signed_at: string, 
/**
 * The key that verifies it: hand it to the auditor out of band.
 */
verifier_key: string, 
/**
 * The signature verified with that key.
 */
signature_ok: boolean, 
/**
 * When this console first saw the key (trust on first use).
 */
key_first_seen: string, 
/**
 * The key differs from the one first seen for this gateway.
 */
key_changed: boolean, 
/**
 * The signed note itself.
 */
checkpoint: string, };

export type ExportOptions = { 
/**
 * From (RFC 3339); none: the beginning.
 */
from?: string, 
/**
 * To (RFC 3339, exclusive); none: now.
 */
to?: string, 
/**
 * A new or empty directory for the bundle.
 */
dir: string, };

export type ExportSummary = { 
/**
 * Records in the bundle's audit log.
 */
records: number, 
/**
 * Of which in the window.
 */
in_window: number, 
/**
 * Sessions exported.
 */
sessions: number, 
/**
 * Identities with an access log.
 */
identities: number, 
/**
 * The gateway's verification of the bundle's log passed.
 */
verified: boolean, };

export type ExportView = { 
/**
 * The export's id.
 */
id: string, 
/**
 * `running`, `done` or `failed`.
 */
state: string, 
/**
 * The stage it is in.
 */
stage: string, 
/**
 * Which stage (from 1) of how many.
 */
stage_number: number, 
/**
 * Stages in all.
 */
stages: number, 
/**
 * Steps of this stage done.
 */
done: number, 
/**
 * Steps in this stage.
 */
total: number, 
/**
 * The window exported (RFC 3339; none: open).
 */
from: string | null, 
/**
 * End of the window (exclusive).
 */
to: string | null, 
/**
 * When it started (RFC 3339).
 */
started_at: string, 
/**
 * When done: what it holds.
 */
summary: ExportSummary | null, 
/**
 * When failed: why, and what to do.
 */
error: string | null, 
/**
 * The archive's size, once done.
 */
bundle_bytes: number | null, };

export type ExportResult = { 
/**
 * Where the bundle is.
 */
dir: string, 
/**
 * What the gateway counted.
 */
summary: ExportSummary, 
/**
 * The console verified the bundle's audit log itself, with the pinned key.
 */
verified_here: boolean, 
/**
 * No key was pinned for this gateway yet: the bundle's own key verified
 * it and is pinned now (compare it with the one the operator handed over).
 */
key_pinned_now: boolean, 
/**
 * The verification report (`verification.txt` as the console wrote it).
 */
report: string, 
/**
 * The key it verified with.
 */
verifier_key: string, 
/**
 * The archive's size.
 */
bytes: number, };

export type ExportProgress = { 
/**
 * `exporting` (the gateway builds it), `downloading`, `verifying`, `done` or `failed`.
 */
phase: string, 
/**
 * What the gateway is doing.
 */
stage: string, 
/**
 * Overall, 0 to 1000.
 */
permille: number, 
/**
 * Bytes downloaded.
 */
bytes: number, 
/**
 * When done or failed: the outcome.
 */
result: ExportResult | null, 
/**
 * When failed: why.
 */
error: ErrorView | null, };

export type ConsoleEvent = { "kind": "local", 
/**
 * Its state now.
 */
status: LocalStatus, } | { "kind": "inbox", 
/**
 * The whole inbox as it stands.
 */
inbox: InboxView, } | { "kind": "traffic", 
/**
 * Its state now.
 */
status: TrafficStatus, } | { "kind": "notice", 
/**
 * `info` or `warning`.
 */
level: string, 
/**
 * What to tell the user.
 */
message: string, } | { "kind": "focus", 
/**
 * The request id.
 */
request: string, } | { "kind": "remote", 
/**
 * Where it stands now.
 */
status: RemoteStatus, } | { "kind": "export", 
/**
 * Its progress.
 */
progress: ExportProgress, };

