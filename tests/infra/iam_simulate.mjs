// Runs IAM requests through @cloud-copilot/iam-simulate (a maintained implementation of IAM's
// documented evaluation logic, pinned in package.json) for tests/infra/policy_evaluation.py.
// stdin: a JSON list of {principal, action, resource, resourceAccount, resourcePolicy,
// identityPolicies, context}; stdout: a JSON list of "Allowed", "ExplicitlyDenied" or
// "ImplicitlyDenied", one per request. A request the simulator rejects (an unknown action, a
// malformed policy) fails the whole run with its message: a typo must not read as a denial.
import { runSimulation } from '@cloud-copilot/iam-simulate'

const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const requests = JSON.parse(Buffer.concat(chunks).toString('utf8'))

const results = []
for (const [index, request] of requests.entries()) {
  const response = await runSimulation(
    {
      identityPolicies: request.identityPolicies.map((policy, n) => ({ name: `identity${n}`, policy })),
      serviceControlPolicies: [],
      resourceControlPolicies: [],
      resourcePolicy: request.resourcePolicy ?? undefined,
      request: {
        principal: request.principal,
        action: request.action,
        resource: { resource: request.resource, accountId: request.resourceAccount },
        contextVariables: request.context,
      },
    },
    {},
  )
  if (response.resultType === 'error') {
    process.stderr.write(`request ${index} (${request.principal} ${request.action} ${request.resource}): ` +
      `${JSON.stringify(response.errors)}\n`)
    process.exit(2)
  }
  results.push(response.overallResult)
}
process.stdout.write(JSON.stringify(results))
