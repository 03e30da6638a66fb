//! The console's TypeScript types are generated from the Rust wire types:
//! this test fails when `ui/src/generated/types.ts` is stale. Regenerate
//! with `TOLLGATE_WRITE_TYPES=1 cargo test -p tollgate-console-core --test typescript`.

use console_core::error::ErrorView;
use console_core::types::*;
use tollgate::approvals::protocol::{ClientMessage, ServerMessage};
use tollgate::identity::PrincipalKind;
use ts_rs::{Config, TS};

fn generated() -> String {
    let config = Config::default();
    let decls = [
        PrincipalKind::decl(&config),
        Requester::decl(&config),
        Vote::decl(&config),
        GrantView::decl(&config),
        RequestView::decl(&config),
        ClientMessage::decl(&config),
        ServerMessage::decl(&config),
        ErrorView::decl(&config),
        Persona::decl(&config),
        LocalInfo::decl(&config),
        LocalStatus::decl(&config),
        LocalOptions::decl(&config),
        DevAccess::decl(&config),
        Me::decl(&config),
        Link::decl(&config),
        InboxItem::decl(&config),
        InboxView::decl(&config),
        Decision::decl(&config),
        TrafficStatus::decl(&config),
        SessionRow::decl(&config),
        SessionSummary::decl(&config),
        Match::decl(&config),
        SessionPage::decl(&config),
        Marker::decl(&config),
        Frame::decl(&config),
        SessionFilter::decl(&config),
        SessionDetail::decl(&config),
        FrameRef::decl(&config),
        FramePage::decl(&config),
        MarkerList::decl(&config),
        SearchResult::decl(&config),
        RemoteSession::decl(&config),
        RemoteStatus::decl(&config),
        SignInOptions::decl(&config),
        Viewer::decl(&config),
        AuditState::decl(&config),
        ExportOptions::decl(&config),
        ExportSummary::decl(&config),
        ExportView::decl(&config),
        ExportResult::decl(&config),
        ExportProgress::decl(&config),
        ConsoleEvent::decl(&config),
    ];
    let mut out = String::from(
        "// Generated from the Rust types by console-core/tests/typescript.rs; do not edit.\n\
         // Regenerate: TOLLGATE_WRITE_TYPES=1 cargo test -p tollgate-console-core --test typescript\n\n",
    );
    for decl in decls {
        out.push_str("export ");
        out.push_str(&decl);
        out.push_str("\n\n");
    }
    out
}

#[test]
fn the_consoles_typescript_types_match_the_rust_ones() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ui/src/generated/types.ts");
    let want = generated();
    if std::env::var_os("TOLLGATE_WRITE_TYPES").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is stale: regenerate it with TOLLGATE_WRITE_TYPES=1 cargo test -p tollgate-console-core --test typescript",
        path.display()
    );
}
