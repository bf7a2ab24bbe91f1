// A real OpenID provider (panva/oidc-provider) for the JWT/OIDC auth tests.
//
// Usage: node provider.mjs CONFIG.json
// CONFIG: {"issuer": "http://127.0.0.1:PORT", "port": PORT,
//          "jwks": {"keys": [private JWKs]},            (the test chooses kids: rotation)
//          "clients": [{"client_id", "client_secret", "claims": {...}}],
//          "resource": "https://broker.test",           (the access tokens' audience)
//          "tls": {"cert": PATH, "key": PATH}}          (optional: serve https)
//
// Clients use the client_credentials grant; with resource indicators the provider issues
// JWT access tokens (RFC 9068) signed with the first key, carrying the client's extra
// claims. Prints "listening <issuer>" once the port is open; stops on SIGTERM.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const extraClaims = new Map(config.clients.map((c) => [c.client_id, c.claims || {}]));

const provider = new Provider(config.issuer, {
  jwks: config.jwks,
  clients: config.clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_post',
  })),
  cookies: { keys: [randomBytes(32).toString('hex')] },
  ttl: { ClientCredentials: 300 },
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => config.resource,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'db',
        audience: config.resource,
        accessTokenTTL: 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: config.jwks.keys[0].alg || 'RS256' } },
      }),
    },
  },
  extraTokenClaims: (ctx, token) => extraClaims.get(token.clientId),
});

const done = () => console.log(`listening ${config.issuer}`);
const server = config.tls
  ? https
      .createServer(
        { cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) },
        provider.callback(),
      )
      .listen(config.port, '127.0.0.1', done)
  : provider.listen(config.port, '127.0.0.1', done);

process.on('SIGTERM', () => server.close(() => process.exit(0)));
