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
api_listen?: string, };

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
 * (HTTP, while the WebSocket is unavailable) or `down`.
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
request: string, };

