// An independent OpenID provider for Tenantry's OIDC relying-party tests.
//
// The protocol is served by `oidc-provider` (a certified OP), not by our code: only the
// login/consent screens are ours, kept minimal so a test can drive them without a browser.
// Usage: node server.mjs config.json  (see tenantry_testkit/oidc_provider.py)

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const configPath = process.argv[2];
if (!configPath) {
  console.error('usage: node server.mjs <config.json>');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));
const jwks = JSON.parse(readFileSync(config.jwks_path, 'utf8'));
const accounts = config.accounts ?? {};

function escapeHtml(value) {
  return String(value ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(res, status, title, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(`<!DOCTYPE html><html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>`
    + `<body>${body}</body></html>`);
}

function loginForm(res, uid, { login = '', error = '', status = 200 } = {}) {
  const message = error ? `<p id="error" role="alert">${escapeHtml(error)}</p>` : '';
  page(res, status, 'Sign in', `<h1>Sign in</h1>${message}`
    + `<form method="post" action="/interaction/${escapeHtml(uid)}/login">`
    + `<input name="login" value="${escapeHtml(login)}" autocomplete="username" autofocus>`
    + '<button type="submit" id="sign-in">Sign in</button></form>');
}

const provider = new Provider(config.issuer, {
  clients: config.clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    redirect_uris: c.redirect_uris,
    token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_basic',
    grant_types: ['authorization_code'],
    response_types: ['code'],
  })),
  jwks,
  // Fresh per process: a restart (key rotation) drops sessions anyway (memory adapter).
  cookies: {
    keys: [randomBytes(32).toString('base64url')],
    // Cookie jars ignore ports: names that cannot collide with the RP's own cookies on 127.0.0.1.
    names: { session: 'op_session', interaction: 'op_interaction', resume: 'op_resume' },
  },
  // Scopes come from the claim groups below; `groups` is our non-standard one.
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'given_name', 'family_name'],
    groups: ['groups'],
  },
  pkce: { required: () => true }, // S256 is the only method oidc-provider supports
  features: {
    devInteractions: { enabled: false },
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(_ctx, sub) {
    const account = accounts[sub];
    if (!account) return undefined;
    return {
      accountId: sub,
      // The provider filters these by the granted scopes; with conformIdTokenClaims (the
      // default) scope-requested claims reach the RP through userinfo only.
      async claims() {
        const name = [account.given_name, account.family_name].filter(Boolean).join(' ');
        return {
          sub,
          email: account.email,
          email_verified: account.email_verified ?? false,
          given_name: account.given_name,
          family_name: account.family_name,
          ...(name ? { name } : {}),
          groups: account.groups ?? [],
        };
      },
    };
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = '<!DOCTYPE html><html><head><meta charset="utf-8"><title>OP error</title></head><body>'
      + `<p id="error">${escapeHtml(out.error)}</p>`
      + `<p id="error_description">${escapeHtml(out.error_description)}</p></body></html>`;
  },
});

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 65536) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// Auto-consent: grant exactly what the provider says is missing (scopes, claims, resources).
async function grantConsent(req, res, details) {
  const { prompt, grantId, session, params } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const missing = prompt.details;
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  await provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, {
    mergeWithLastSubmission: true,
  });
}

async function interaction(req, res, uid, action) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    page(res, 400, 'OP error', `<p id="error">${escapeHtml(err.error ?? 'invalid_request')}</p>`
      + `<p id="error_description">${escapeHtml(err.error_description ?? err.message)}</p>`);
    return;
  }
  if (details.uid !== uid) {
    page(res, 400, 'OP error', '<p id="error">invalid_request</p>'
      + '<p id="error_description">interaction id does not match the cookie</p>');
    return;
  }
  if (req.method === 'GET' && !action) {
    if (details.prompt.name === 'consent') {
      await grantConsent(req, res, details);
    } else {
      loginForm(res, uid, { login: details.params.login_hint ?? '' });
    }
    return;
  }
  if (req.method === 'POST' && action === 'login') {
    const login = (await readForm(req)).get('login') ?? '';
    if (details.prompt.name !== 'login') {
      page(res, 400, 'OP error', '<p id="error">invalid_request</p>'
        + '<p id="error_description">no login is pending for this interaction</p>');
      return;
    }
    if (!Object.hasOwn(accounts, login)) {
      loginForm(res, uid, { login, error: `unknown account: ${login}`, status: 401 });
      return;
    }
    // Consent follows as its own prompt, which the GET above grants without asking.
    await provider.interactionFinished(req, res, { login: { accountId: login } }, {
      mergeWithLastSubmission: false,
    });
    return;
  }
  page(res, 405, 'OP error', '<p id="error">method_not_allowed</p>');
}

const providerHandler = provider.callback();
const interactionPath = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login))?\/?$/;

const server = createServer((req, res) => {
  const { pathname } = new URL(req.url, config.issuer);
  const match = interactionPath.exec(pathname);
  if (!match) {
    providerHandler(req, res);
    return;
  }
  interaction(req, res, match[1], match[2]).catch((err) => {
    console.error(err);
    if (!res.headersSent) page(res, 500, 'OP error', '<p id="error">server_error</p>');
    else res.end();
  });
});

server.listen(config.port, '127.0.0.1', () => {
  console.log('ready');
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
