// Validates the ServiceMonitors (and PrometheusRules) of a rendered chart against prometheus-operator's
// schema, as shipped by the npm package @kubernetes-models/prometheus-operator (types, required
// fields, enums, patterns; like the CRD's structural schema it does not flag unknown fields, which
// the API server would prune). Run by .ci/chart-check from the directory it installs the packages in.
import fs from 'node:fs';
import yaml from 'js-yaml';
import { PrometheusRule, ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';

const models = { ServiceMonitor, PrometheusRule };

let bad = 0;
let n = 0;
for (const doc of yaml.loadAll(fs.readFileSync(process.argv[2], 'utf8'))) {
  if (!doc || !models[doc.kind]) continue;
  n++;
  try {
    new models[doc.kind](doc).validate();
  } catch (e) {
    bad++;
    console.log(`FAIL ${doc.kind} ${doc.metadata.name}: ${e.message}`);
  }
}
console.log(`${n} ServiceMonitor(s) and PrometheusRule(s) checked against @kubernetes-models/prometheus-operator's schema, ${bad} invalid`);
process.exit(bad ? 3 : 0); // 3: invalid (any other failure is the validator's own)
