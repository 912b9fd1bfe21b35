import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "chai";
import { dataSlice, encodeBytes32String, getAddress, id } from "ethers";
import { ConfigError } from "../../agents/errors.js";
import {
  formatParticipantsCsv,
  parseParticipantsCsv,
  ParticipantsFileError,
  readParticipantsFile,
  type FileProblem,
} from "../../agents/cli/participantsFile.js";
import { syntheticParticipants } from "../../agents/cli/syntheticParticipants.js";

const HEADER = "account,meterId,meterKey,kind,amount";
// Checksummed addresses; LOWER is the all-lower-case spelling of A1 (no checksum, accepted).
const A1 = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
const A2 = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const A3 = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";
const K1 = "0x90F79bf6EB2c4f870365E785982E1f101E93b906";
const K2 = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65";
const K3 = "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc";

function addr(seed: string): string {
  return getAddress(dataSlice(id(seed), 12));
}

/** The problems a bad file is rejected with. */
function problemsOf(text: string): FileProblem[] {
  try {
    parseParticipantsCsv(text, "test.csv");
  } catch (e) {
    expect(e).to.be.instanceOf(ParticipantsFileError);
    return [...(e as ParticipantsFileError).problems];
  }
  expect.fail("the file was accepted");
}

function csv(...lines: string[]): string {
  return `${lines.join("\n")}\n`;
}

describe("participants file", () => {
  it("parses a good file: checksummed addresses, bytes32 meter ids, kinds, amounts in base units", () => {
    const rows = parseParticipantsCsv(
      csv(HEADER, `${A1},MTR-001,${K1},consumer,100.5`, `${A2},MTR-002,${K2},prosumer,0.000001`, `${A3},slack,${K3},slackUnit,7`),
    );
    expect(rows).to.have.length(3);
    expect(rows[0]).to.deep.equal({
      line: 2,
      account: A1,
      meterId: encodeBytes32String("MTR-001"),
      meterIdText: "MTR-001",
      meterKey: K1,
      kind: "consumer",
      amount: 100_500_000n,
    });
    expect(rows[1]?.amount).to.equal(1n);
    expect(rows[2]?.kind).to.equal("slackUnit");
    expect(rows[2]?.amount).to.equal(7_000_000n);
  });

  it("accepts columns in any order, CRLF, a BOM, blank lines, quotes, lower-case addresses and any case of kind", () => {
    const text = `\uFEFFkind,amount,account,meterKey,meterId\r\n\r\nFlexibleLoad,"12.25",${A1.toLowerCase()},${K1}," a,""b"" "\r\n`;
    const [row] = parseParticipantsCsv(text);
    expect(row?.line).to.equal(3);
    expect(row?.account).to.equal(A1);
    expect(row?.kind).to.equal("flexibleLoad");
    expect(row?.amount).to.equal(12_250_000n);
    expect(row?.meterIdText).to.equal(' a,"b" ');
  });

  it("rejects an empty file, and a header without participants", () => {
    expect(problemsOf("")).to.deep.equal([{ line: 1, reason: `the file is empty; expected the header ${HEADER}` }]);
    expect(problemsOf(" \n\n")).to.have.length(1);
    expect(problemsOf(csv(HEADER))).to.deep.equal([{ line: 1, reason: "no participants after the header" }]);
  });

  it("rejects unknown, missing and repeated columns", () => {
    const problems = problemsOf(csv("account,meterId,meter_key,kind,amount,amount", `${A1},M1,${K1},consumer,1,1`));
    expect(problems).to.deep.include({ line: 1, reason: `unknown column "meter_key" (expected ${HEADER})` });
    expect(problems).to.deep.include({ line: 1, reason: 'column "amount" appears twice' });
    expect(problems).to.deep.include({ line: 1, reason: 'missing column "meterKey"' });
  });

  it("reports every bad field with its line and reason, all in one error", () => {
    const badChecksum = A2.replace("C8", "c8");
    // Distinct accounts and keys per line, so that only the intended problem shows.
    const a = (n: number): string => addr(`account${n}`);
    const k = (n: number): string => addr(`key${n}`);
    const problems = problemsOf(
      csv(
        HEADER,
        `${A1},M1,${K1},consumer,100`, // line 2: good
        `0x1234,M2,${K2},consumer,1`, // 3
        `${badChecksum},M3,${K3},consumer,1`, // 4
        `${a(5)},M4,0x0000000000000000000000000000000000000000,consumer,1`, // 5
        `${a(6)},M5,${k(6)},consumer,-5`, // 6
        `${a(7)},M6,${k(7)},consumer,abc`, // 7
        `${a(8)},M7,${k(8)},consumer,1.0000001`, // 8
        `${a(9)},M8,${k(9)},battery,1`, // 9
        `${a(10)},${"x".repeat(32)},${k(10)},consumer,1`, // 10
        `${a(11)},M10,${k(11)},consumer`, // 11
        `${a(12)},M11,${k(12)},consumer,`, // 12
        `${a(13)},"M12,${k(13)},consumer,1`, // 13
      ),
    );
    expect(problems).to.deep.equal([
      { line: 3, reason: 'account "0x1234" is not an address (0x and 40 hex digits)' },
      {
        line: 4,
        reason: `account ${badChecksum} has a bad checksum (mixed case that is not EIP-55); check the address, or write it all lower case`,
      },
      { line: 5, reason: "meterKey is the zero address" },
      { line: 6, reason: "amount -5 is negative" },
      { line: 7, reason: 'amount "abc" is not a decimal number of tokens (like 100 or 100.5)' },
      { line: 8, reason: "amount 1.0000001 has 7 decimals; the token has 6" },
      { line: 9, reason: 'unknown kind "battery" (expected one of consumer, prosumer, producer, storage, flexibleLoad, slackUnit)' },
      { line: 10, reason: `meterId "${"x".repeat(32)}" is 32 characters long; at most 31 fit in bytes32` },
      { line: 11, reason: "4 fields, expected 5 as in the header" },
      { line: 12, reason: "amount is empty" },
      { line: 13, reason: "a quoted field is not closed" },
    ]);
  });

  it("rejects duplicate accounts, meter ids and meter keys on the later line, naming the first", () => {
    const problems = problemsOf(
      csv(
        HEADER,
        `${A1},M1,${K1},consumer,1`,
        `${A1.toLowerCase()},M2,${K2},consumer,1`, // same account, other spelling
        `${A2},M1,${K3},consumer,1`,
        `${A3},M3,${K1},consumer,1`,
      ),
    );
    expect(problems).to.deep.equal([
      { line: 3, reason: `duplicate account ${A1} (first on line 2)` },
      { line: 4, reason: 'duplicate meterId "M1" (first on line 2)' },
      { line: 5, reason: `duplicate meterKey ${K1} (first on line 2)` },
    ]);
  });

  it("rejects a second slack unit", () => {
    const problems = problemsOf(csv(HEADER, `${A1},M1,${K1},slackUnit,1`, `${A2},M2,${K2},consumer,1`, `${A3},M3,${K3},slackunit,1`));
    expect(problems).to.deep.equal([{ line: 4, reason: "a second slack unit (the first is on line 2); a market has one" }]);
  });

  it("reports several problems of one line, and problems of header and rows together", () => {
    const problems = problemsOf(csv("account,meterId,meterKey,kind,amount,note", `0xzz,${"é"},${K1},nobody,1.1234567,x`));
    expect(problems.map((p) => p.line)).to.deep.equal([1, 2, 2, 2, 2]);
    expect(problems[0]?.reason).to.match(/unknown column "note"/);
    expect(problems.slice(1).map((p) => p.reason.split(" ")[0])).to.deep.equal(["account", "meterId", "unknown", "amount"]);
  });

  it("is a ConfigError naming the file, listing the problems", () => {
    try {
      parseParticipantsCsv(csv(HEADER, `${A1},M1,${K1},consumer,-1`), "people.csv");
      expect.fail("accepted");
    } catch (e) {
      expect(e).to.be.instanceOf(ConfigError);
      expect((e as ConfigError).field).to.equal("people.csv");
      expect((e as Error).message).to.include("line 2: amount -1 is negative");
      expect((e as Error).message).to.include("nothing was sent");
    }
  });

  it("reads a 1,000-line file, and writing it back gives the same participants", () => {
    const dir = mkdtempSync(join(tmpdir(), "participants-"));
    try {
      const participants = syntheticParticipants(1000, "file", { slackUnit: true });
      const file = join(dir, "p.csv");
      writeFileSync(file, formatParticipantsCsv(participants));
      const rows = readParticipantsFile(file);
      expect(rows).to.have.length(1000);
      expect(rows.map(({ account, meterId, meterKey, kind, amount }) => ({ account, meterId, meterKey, kind, amount }))).to.deep.equal(participants);
      expect(rows[999]?.line).to.equal(1001);
      expect(rows.filter((r) => r.kind === "slackUnit")).to.have.length(1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("says which file cannot be read", () => {
    expect(() => readParticipantsFile("/nonexistent/p.csv")).to.throw(ConfigError, /\/nonexistent\/p.csv: cannot read the participants file: ENOENT/);
  });
});
