import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "chai";
import { encryptKeystoreJsonSync, Wallet } from "ethers";
import { ConfigError } from "../../agents/errors.js";
import { walletFromEnv } from "../../agents/chain/signer.js";

const KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
const ADDRESS = new Wallet(KEY).address;

/** The ConfigError walletFromEnv rejects `env` with. */
async function rejection(env: NodeJS.ProcessEnv, repoRoot?: string): Promise<ConfigError> {
  try {
    await walletFromEnv({ env, ...(repoRoot === undefined ? {} : { repoRoot }) });
  } catch (e) {
    expect(e).to.be.instanceOf(ConfigError);
    return e as ConfigError;
  }
  expect.fail("a wallet was returned");
}

describe("signer from the environment", () => {
  let dir: string;
  let keystore: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "signer-"));
    keystore = join(dir, "key.json");
    // A cheap scrypt cost keeps the test fast; real keystores use ethers' default.
    const wallet = new Wallet(KEY);
    writeFileSync(keystore, encryptKeystoreJsonSync({ address: wallet.address, privateKey: KEY }, "secret", { scrypt: { N: 1024 } }));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("takes a private key, with or without 0x", async () => {
    expect((await walletFromEnv({ env: { MARKET_PRIVATE_KEY: KEY } })).address).to.equal(ADDRESS);
    expect((await walletFromEnv({ env: { MARKET_PRIVATE_KEY: KEY.slice(2) } })).address).to.equal(ADDRESS);
  });

  it("decrypts a keystore with its password", async () => {
    const wallet = await walletFromEnv({ env: { MARKET_KEYSTORE_FILE: keystore, MARKET_KEYSTORE_PASSWORD: "secret" } });
    expect(wallet.address).to.equal(ADDRESS);
  });

  it("names the variable to fix, never showing the secret", async () => {
    const none = await rejection({});
    expect(none.message).to.include("MARKET_KEYSTORE_FILE").and.include("MARKET_PRIVATE_KEY");

    const bad = await rejection({ MARKET_PRIVATE_KEY: "0x1234deadbeef" });
    expect(bad.field).to.equal("MARKET_PRIVATE_KEY");
    expect(bad.message).to.not.include("1234deadbeef");

    expect((await rejection({ MARKET_PRIVATE_KEY: KEY, MARKET_KEYSTORE_FILE: keystore })).message).to.include("not both");
    expect((await rejection({ MARKET_KEYSTORE_FILE: keystore })).field).to.equal("MARKET_KEYSTORE_PASSWORD");

    const wrong = await rejection({ MARKET_KEYSTORE_FILE: keystore, MARKET_KEYSTORE_PASSWORD: "guess" });
    expect(wrong.field).to.equal("MARKET_KEYSTORE_PASSWORD");
    expect(wrong.message).to.include("wrong password").and.not.include("guess");

    const missing = await rejection({ MARKET_KEYSTORE_FILE: join(dir, "nope.json"), MARKET_KEYSTORE_PASSWORD: "x" });
    expect(missing.field).to.equal("MARKET_KEYSTORE_FILE");
    expect(missing.message).to.include("ENOENT");
  });

  it("refuses a keystore inside the repository", async () => {
    const inside = await rejection({ MARKET_KEYSTORE_FILE: keystore, MARKET_KEYSTORE_PASSWORD: "secret" }, dir);
    expect(inside.field).to.equal("MARKET_KEYSTORE_FILE");
    expect(inside.message).to.include("inside the repository");
  });

  it("reads other variable names, for meter agents", async () => {
    const names = { privateKey: "METER_KEY", keystoreFile: "METER_KEYSTORE", keystorePassword: "METER_PASSWORD" };
    expect((await walletFromEnv({ names, env: { METER_KEY: KEY } })).address).to.equal(ADDRESS);
  });
});
