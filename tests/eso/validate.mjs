// Validates the External Secrets documents given as a JSON list on stdin against ESO's
// CRD schemas (@kubernetes-models/external-secrets, generated from ESO's CRDs). Prints one
// line per document; exits 1 on the first invalid one or an unknown kind.
import { readFileSync } from "node:fs";
import { ExternalSecret, SecretStore, ClusterSecretStore } from "@kubernetes-models/external-secrets/external-secrets.io/v1";
import { VaultDynamicSecret } from "@kubernetes-models/external-secrets/generators.external-secrets.io/v1alpha1/VaultDynamicSecret";

const models = {
  "external-secrets.io/v1/ExternalSecret": ExternalSecret,
  "external-secrets.io/v1/SecretStore": SecretStore,
  "external-secrets.io/v1/ClusterSecretStore": ClusterSecretStore,
  "generators.external-secrets.io/v1alpha1/VaultDynamicSecret": VaultDynamicSecret,
};
for (const doc of JSON.parse(readFileSync(0, "utf8"))) {
  const Model = models[`${doc.apiVersion}/${doc.kind}`];
  if (!Model) {
    console.log(`unknown ${doc.apiVersion} ${doc.kind}`);
    process.exit(1);
  }
  try {
    new Model(doc).validate();
  } catch (error) {
    console.log(`invalid ${doc.kind} ${doc.metadata?.name}: ${error.message}`);
    process.exit(1);
  }
  console.log(`valid ${doc.kind} ${doc.metadata?.name}`);
}
