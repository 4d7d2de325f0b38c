// A real OpenID Provider for the tests (panva/oidc-provider, OpenID-certified), on 127.0.0.1:PORT.
//   node provider.mjs PORT KEYS.json [WEB_URL WEB_CLIENT_JWKS.json]
// KEYS.json: a JWKS with private keys (the first signs). Clients hms-staff, hms-citizen and hms-nobody
// (client_credentials, secret "secret") get JWT access tokens for the resource https://hms.example/api carrying
// roles where Keycloak puts them (realm_access.roles).
// With WEB_URL (an hms gateway's base URL), browser sign-in too: client hms-web (authorization code, secret
// "web-secret", client_secret_basic) and hms-web-jwt (private_key_jwt with the public keys in WEB_CLIENT_JWKS.json),
// both redirecting to WEB_URL/signin/callback, PKCE required. The provider's own development login page accepts any
// login name and password: the account "casey" is staff (benefits-staff), any other a citizen (benefits-citizen),
// "nobody" has no role at all. The roles scope puts realm_access in the userinfo response.
import fs from "node:fs";
import Provider from "oidc-provider";

const [port, keysFile, web, webClientJwks] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const browserClient = (client_id, auth) => ({
  client_id,
  grant_types: ["authorization_code"],
  response_types: ["code"],
  redirect_uris: [`${web}/signin/callback`],
  post_logout_redirect_uris: [`${web}/`],
  ...auth,
});
const webClients = web
  ? [
      browserClient("hms-web", { client_secret: "web-secret", token_endpoint_auth_method: "client_secret_basic" }),
      browserClient("hms-web-jwt", {
        token_endpoint_auth_method: "private_key_jwt",
        token_endpoint_auth_signing_alg: "RS256",
        jwks: JSON.parse(fs.readFileSync(webClientJwks, "utf8")),
      }),
    ]
  : [];
const roles = { casey: ["benefits-staff"], nobody: [] };
const provider = new Provider(issuer, {
  jwks: JSON.parse(fs.readFileSync(keysFile, "utf8")),
  clients: [
    ...["hms-staff", "hms-citizen", "hms-nobody"].map((client_id) => ({
      client_id,
      client_secret: "secret",
      grant_types: ["client_credentials"],
      redirect_uris: [],
      response_types: [],
    })),
    ...webClients,
  ],
  acrValues: ["urn:hms:loa:1"],
  claims: { openid: ["sub"], profile: ["name"], roles: ["realm_access"] },
  findAccount: (ctx, id) => ({
    accountId: id,
    claims: () => ({ sub: id, name: id, realm_access: { roles: roles[id] ?? ["benefits-citizen"] } }),
  }),
  pkce: { required: () => true },
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: Boolean(web) },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // The API's tokens for the client_credentials clients; browser sign-in gets a userinfo access token.
      defaultResource: (ctx, client) =>
        client.grantTypes.includes("client_credentials") ? "https://hms.example/api" : undefined,
      getResourceServerInfo: () => ({
        scope: "claims",
        audience: "https://hms.example/api",
        accessTokenFormat: "jwt",
        jwt: { sign: { alg: "RS256" } },
      }),
    },
  },
  // Roles where Keycloak puts them, in the provider's own names, by client.
  extraTokenClaims: (ctx) => ({
    realm_access: {
      roles: { "hms-staff": ["benefits-staff", "offline_access"], "hms-citizen": ["benefits-citizen"] }[
        ctx.oidc.client.clientId
      ] || ["offline_access"],
    },
  }),
});
provider.listen(Number(port), "127.0.0.1", () => console.log(`ready ${issuer}`));
