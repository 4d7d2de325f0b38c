// A real OpenID Provider for the tests (panva/oidc-provider, OpenID-certified), on 127.0.0.1:PORT.
//   node provider.mjs PORT KEYS.json
// KEYS.json: a JWKS with private keys (the first signs). Clients hms-staff, hms-citizen and hms-nobody
// (client_credentials, secret "secret") get JWT access tokens for the resource https://hms.example/api carrying roles where
// Keycloak puts them (realm_access.roles).
import fs from "node:fs";
import Provider from "oidc-provider";

const [port, keysFile] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  jwks: JSON.parse(fs.readFileSync(keysFile, "utf8")),
  clients: ["hms-staff", "hms-citizen", "hms-nobody"].map((client_id) => ({
    client_id,
    client_secret: "secret",
    grant_types: ["client_credentials"],
    redirect_uris: [],
    response_types: [],
  })),
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => "https://hms.example/api",
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
