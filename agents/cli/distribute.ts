/**
 * npm run distribute -- --file participants.csv [--rpc URL] [--deployment DIR | --token ADDR --registry ADDR]
 *
 * Registers the file's participants and mints their tokens. Safe to run again: it sends only
 * what is missing (see agents/chain/distribution.ts).
 */
import { formatUnits } from "ethers";
import { ConfigError } from "../errors.js";
import { executeDistribution, MINT_BATCH_SIZE, planDistribution, planIsDone, type DistributionProgress } from "../chain/distribution.js";
import { MARKET_OPTIONS, MARKET_OPTIONS_HELP, SIGNER_HELP, connectFromOptions, parseCli, runCli } from "./common.js";
import { readParticipantsFile, TOKEN_DECIMALS } from "./participantsFile.js";

const USAGE = `usage: npm run distribute -- --file FILE [options]

Registers the participants of FILE (CSV: account,meterId,meterKey,kind,amount) that are not yet
registered, and mints their amounts in batches of ${MINT_BATCH_SIZE}. Running it again sends nothing new;
a run that stopped half-way resumes. The file's content identifies the distribution: an edited
file is a new distribution and mints again, so add late participants in a file of their own.

options:
  --file FILE         the participants file (required)
${MARKET_OPTIONS_HELP}
  --batch-size N      registrations per transaction (default 100)
  --label TEXT        distribute the same file again as a new round (e.g. --label 2025-07)
  --dry-run           check the file and the chain, print the plan, send nothing

${SIGNER_HELP}`;

async function main(): Promise<void> {
  const { values } = parseCli(
    {
      options: {
        ...MARKET_OPTIONS,
        file: { type: "string" },
        "batch-size": { type: "string" },
        label: { type: "string" },
        "dry-run": { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    },
    USAGE,
  );
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (values.file === undefined) throw new ConfigError("--file", `missing\n\n${USAGE}`);
  const registerBatchSize = values["batch-size"] === undefined ? undefined : Number(values["batch-size"]);
  if (registerBatchSize !== undefined && !(Number.isInteger(registerBatchSize) && registerBatchSize > 0)) {
    throw new ConfigError("--batch-size", `"${values["batch-size"]}" is not a positive integer`);
  }

  // The file first: a bad file is reported before anything touches the chain.
  const participants = readParticipantsFile(values.file);
  const dryRun = values["dry-run"];
  const market = await connectFromOptions(values, !dryRun);
  const symbol = await market.energyToken.symbol();
  const progress = (p: DistributionProgress): void => {
    const line =
      p.phase === "check"
        ? `checking the chain: ${p.done}/${p.total} participants`
        : p.phase === "register"
          ? `registered batch ${p.batch}/${p.batches}: ${p.participants} participants (tx ${p.txHash}, ${p.gasUsed} gas)`
          : p.phase === "mint"
            ? `minted batch ${p.batch}/${p.batches}: ${p.recipients} recipients (tx ${p.txHash}, ${p.gasUsed} gas)`
            : `mint batch ${p.batch}/${p.batches} was minted before, skipped`;
    process.stderr.write(`${line}\n`);
  };
  const options = { label: values.label, onProgress: progress, ...(registerBatchSize === undefined ? {} : { registerBatchSize }) };

  const plan = await planDistribution(market, participants, options);
  const toRegister = plan.registerBatches.reduce((n, b) => n + b.length, 0);
  const pending = plan.mintBatches.filter((b) => !b.minted);
  const pendingTotal = pending.reduce((sum, b) => sum + b.total, 0n);
  console.log(`distribution ${plan.distributionId} from ${values.file}`);
  console.log(`  participants: ${plan.participants} (${plan.alreadyRegistered} registered already, ${toRegister} to register)`);
  console.log(
    `  mint batches: ${plan.mintBatches.length} (${plan.mintBatches.length - pending.length} minted already, ${pending.length} to mint: ${formatUnits(pendingTotal, TOKEN_DECIMALS)} ${symbol})`,
  );
  if (planIsDone(plan)) {
    console.log("nothing to do: every participant is registered and every batch minted");
    return;
  }
  if (dryRun) {
    console.log("dry run: nothing sent");
    return;
  }
  const result = await executeDistribution(market, plan, options);
  console.log(
    `done: registered ${result.registered}, minted ${result.mintBatchesSent} batches (${formatUnits(result.minted, TOKEN_DECIMALS)} ${symbol}), ${result.transactions.length} transactions, ${result.gasUsed} gas`,
  );
}

runCli(main);
