// A real OpenID Provider for the console's sign-in tests (panva's certified
// oidc-provider, offline). Usage: node provider.mjs PORT AUDIENCE [TOKEN_TTL_SECS]
// It prints "ready <issuer>" once listening. The console is a native public
// client (PKCE, loopback redirect on any port, RFC 8252). Access tokens are
// JWTs for AUDIENCE carrying the user's groups and amr; refresh tokens are
// issued for offline_access. Users sign in with any password (the dev
// login form); their groups come from the table below.
import Provider from 'oidc-provider';

const [port, audience, ttlArg] = process.argv.slice(2);
if (!port || !audience) {
  console.error('usage: node provider.mjs PORT AUDIENCE [TOKEN_TTL_SECS]');
  process.exit(2);
}
const ttl = Number(ttlArg || 3600);
const issuer = `http://127.0.0.1:${port}`;
const groups = {
  alice: ['analysts'],
  quinn: ['auditors'],
  olga: ['approvers'],
  ana: ['analysts', 'auditors'],
};

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'tollgate-console',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    redirect_uris: ['http://127.0.0.1/callback'],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
  }],
  scopes: ['openid', 'profile', 'offline_access'],
  claims: { openid: ['sub'], profile: ['name'] },
  findAccount: (_ctx, sub) => ({
    accountId: sub,
    claims: () => ({ sub, name: sub }),
  }),
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resource) => {
        if (resource !== audience) throw new Error(`unknown resource ${resource}`);
        return {
          audience,
          scope: 'openid profile offline_access',
          accessTokenFormat: 'jwt',
          accessTokenTTL: ttl,
        };
      },
    },
  },
  // The test users consent to what the console asks for.
  loadExistingGrant: async (ctx) => {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    if (!ctx.oidc.session.accountId) return undefined;
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid profile offline_access');
    grant.addResourceScope(audience, 'openid profile offline_access');
    await grant.save();
    return grant;
  },
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  extraTokenClaims: (_ctx, token) => ({
    groups: groups[token.accountId] ?? [],
    amr: ['pwd', 'otp'],
  }),
  ttl: {
    AccessToken: ttl,
    IdToken: 3600,
    RefreshToken: 86400,
    Grant: 86400,
    Session: 86400,
    Interaction: 600,
  },
  rotateRefreshToken: true,
});
provider.on('server_error', (_ctx, err) => console.error('server_error', err));
provider.listen(Number(port), '127.0.0.1', () => console.log(`ready ${issuer}`));
