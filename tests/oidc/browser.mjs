// A scripted user at the OpenID Provider's dev login form, for tests: what
// a person does in the system browser. Usage: node browser.mjs URL. It follows the
// redirects with its own cookie jar, submits the login form, and finally
// requests the console's loopback redirect, as a browser would.
import { readFileSync } from 'node:fs';

const start = process.argv[2];
// The user: TOLLGATE_TEST_LOGIN, else the first line of TOLLGATE_TEST_LOGIN_FILE
// (a test that signs in as several users in turn rewrites it), else alice.
const login = process.env.TOLLGATE_TEST_LOGIN
  || (process.env.TOLLGATE_TEST_LOGIN_FILE && readFileSync(process.env.TOLLGATE_TEST_LOGIN_FILE, 'utf8').trim())
  || 'alice';
if (!start) {
  console.error('usage: node browser.mjs URL');
  process.exit(2);
}
const jar = new Map();
const cookies = () => [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
function keep(response) {
  for (const line of response.headers.getSetCookie()) {
    const [pair] = line.split(';');
    const eq = pair.indexOf('=');
    jar.set(pair.slice(0, eq).trim(), pair.slice(eq + 1).trim());
  }
}
async function go(url, init = {}) {
  let current = new URL(url);
  for (let hops = 0; hops < 20; hops += 1) {
    const response = await fetch(current, {
      ...init,
      redirect: 'manual',
      headers: { ...(init.headers || {}), cookie: cookies() },
    });
    keep(response);
    const location = response.headers.get('location');
    if (response.status >= 300 && response.status < 400 && location) {
      current = new URL(location, current);
      init = {};
      continue;
    }
    return { url: current, response, body: await response.text() };
  }
  throw new Error('too many redirects');
}
let page = await go(start);
for (let step = 0; step < 5; step += 1) {
  if (page.url.pathname === '/callback') {
    console.log(`signed in as ${login}: ${page.response.status}`);
    process.exit(page.response.ok ? 0 : 1);
  }
  const action = page.body.match(/<form[^>]*action="([^"]+)"/);
  if (!action) {
    console.error(`no form at ${page.url}: ${page.response.status} ${page.body.slice(0, 500)}`);
    process.exit(1);
  }
  const form = new URLSearchParams();
  for (const m of page.body.matchAll(/<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"/g)) {
    form.set(m[1], m[2]);
  }
  if (/name="login"/.test(page.body)) {
    form.set('login', login);
    form.set('password', 'any');
  }
  page = await go(new URL(action[1], page.url), {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: form.toString(),
  });
}
console.error(`sign-in did not finish at ${page.url}`);
process.exit(1);
