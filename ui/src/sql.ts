// A small SQL tokenizer for highlighting statements in the inbox. It never
// produces HTML: the view turns tokens into text nodes.

export type TokenKind = "keyword" | "param" | "string" | "number" | "ident" | "comment" | "op" | "space";

export interface Token {
  kind: TokenKind;
  text: string;
}

const KEYWORDS = new Set(
  (
    "select from where and or not in is null as on join left right inner outer full cross using group by order " +
    "having limit offset union all distinct insert into values update set delete returning copy to stdout stdin " +
    "with create alter drop table index view truncate grant revoke begin commit rollback explain analyze case when " +
    "then else end like ilike between exists call do function procedure lock for share nowait asc desc true false " +
    "default primary key references cascade schema database role user lateral window over partition filter"
  ).split(" "),
);

const IDENT_START = /[A-Za-z_\u0080-\uffff]/;
const IDENT_PART = /[A-Za-z0-9_$\u0080-\uffff]/;

export function tokenize(sql: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  const push = (kind: TokenKind, end: number) => {
    tokens.push({ kind, text: sql.slice(i, end) });
    i = end;
  };
  while (i < sql.length) {
    const c = sql[i];
    const rest = sql.slice(i);
    if (/\s/.test(c)) {
      let j = i + 1;
      while (j < sql.length && /\s/.test(sql[j])) j++;
      push("space", j);
    } else if (rest.startsWith("--")) {
      const nl = sql.indexOf("\n", i);
      push("comment", nl < 0 ? sql.length : nl);
    } else if (rest.startsWith("/*")) {
      const close = sql.indexOf("*/", i + 2);
      push("comment", close < 0 ? sql.length : close + 2);
    } else if (c === "'" || ((c === "E" || c === "e") && sql[i + 1] === "'")) {
      let j = sql.indexOf("'", i) + 1;
      while (j < sql.length) {
        if (sql[j] === "\\" && c !== "'") j += 2;
        else if (sql[j] === "'" && sql[j + 1] === "'") j += 2;
        else if (sql[j] === "'") break;
        else j++;
      }
      push("string", Math.min(j + 1, sql.length));
    } else if (c === "$" && /[0-9]/.test(sql[i + 1] ?? "")) {
      let j = i + 1;
      while (j < sql.length && /[0-9]/.test(sql[j])) j++;
      push("param", j);
    } else if (c === "$") {
      const tag = /^\$[A-Za-z_]*\$/.exec(rest);
      if (tag) {
        const close = sql.indexOf(tag[0], i + tag[0].length);
        push("string", close < 0 ? sql.length : close + tag[0].length);
      } else push("op", i + 1);
    } else if (c === '"') {
      let j = i + 1;
      while (j < sql.length && !(sql[j] === '"' && sql[j + 1] !== '"')) j += sql[j] === '"' ? 2 : 1;
      push("ident", Math.min(j + 1, sql.length));
    } else if (/[0-9]/.test(c)) {
      let j = i + 1;
      while (j < sql.length && /[0-9._eE]/.test(sql[j])) j++;
      push("number", j);
    } else if (IDENT_START.test(c)) {
      let j = i + 1;
      while (j < sql.length && IDENT_PART.test(sql[j])) j++;
      const word = sql.slice(i, j);
      push(KEYWORDS.has(word.toLowerCase()) ? "keyword" : "ident", j);
    } else {
      push("op", i + 1);
    }
  }
  return tokens;
}

/** The statement as highlighted text nodes in `into` (replacing what was there). */
export function highlight(sql: string, into: HTMLElement): void {
  into.replaceChildren(
    ...tokenize(sql).map((t) => {
      if (t.kind === "space" || t.kind === "op" || t.kind === "ident") return document.createTextNode(t.text);
      const span = document.createElement("span");
      span.className = `sql-${t.kind}`;
      span.textContent = t.text;
      return span;
    }),
  );
}
