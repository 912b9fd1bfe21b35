import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Wallet, type BaseWallet } from "ethers";
import { ConfigError } from "../errors.js";

/**
 * The environment variables a signing key is read from. Keys never live in the repository:
 * either a private key in the environment (handy for a local dev node and CI), or an encrypted
 * JSON keystore (what a regulator or a Raspberry Pi should use) whose password is in the
 * environment.
 */
export interface SignerEnvNames {
  /** Hex private key. */
  privateKey: string;
  /** Path of an encrypted JSON keystore (geth/ethers "V3" format). */
  keystoreFile: string;
  /** Password of that keystore. */
  keystorePassword: string;
}

/** The regulator's (master agent's, CLI tools') key. Meter agents pass their own names. */
export const MARKET_SIGNER_ENV: SignerEnvNames = {
  privateKey: "MARKET_PRIVATE_KEY",
  keystoreFile: "MARKET_KEYSTORE_FILE",
  keystorePassword: "MARKET_KEYSTORE_PASSWORD",
};

const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));

export interface SignerOptions {
  names?: SignerEnvNames;
  env?: NodeJS.ProcessEnv;
  /** Keystore files inside this folder are refused (default: this repository). */
  repoRoot?: string;
}

/** Whether any of the variables of `names` is set, i.e. whether a signer was configured. */
export function signerConfigured(options: SignerOptions = {}): boolean {
  const names = options.names ?? MARKET_SIGNER_ENV;
  const env = options.env ?? process.env;
  return [names.privateKey, names.keystoreFile].some((n) => nonEmpty(env[n]) !== undefined);
}

/**
 * The wallet configured in the environment (not connected to a provider): from the keystore
 * file + password, or from the private key. Throws ConfigError naming the variable to fix;
 * never puts a key or password into a message.
 */
export async function walletFromEnv(options: SignerOptions = {}): Promise<BaseWallet> {
  const names = options.names ?? MARKET_SIGNER_ENV;
  const env = options.env ?? process.env;
  const privateKey = nonEmpty(env[names.privateKey]);
  const keystoreFile = nonEmpty(env[names.keystoreFile]);

  if (privateKey !== undefined && keystoreFile !== undefined) {
    throw new ConfigError(names.privateKey, `set either ${names.privateKey} or ${names.keystoreFile}, not both`);
  }
  if (privateKey !== undefined) return walletFromPrivateKey(privateKey, names.privateKey);
  if (keystoreFile !== undefined) {
    const password = env[names.keystorePassword];
    if (password === undefined) {
      throw new ConfigError(names.keystorePassword, `not set; it is the password of the keystore ${names.keystoreFile}=${keystoreFile}`);
    }
    return walletFromKeystore(keystoreFile, password, { ...names, repoRoot: options.repoRoot ?? REPO_ROOT });
  }
  throw new ConfigError(
    names.privateKey,
    `no signing key: set ${names.keystoreFile} (an encrypted JSON keystore outside the repository) and ${names.keystorePassword}, or ${names.privateKey}`,
  );
}

/** A wallet from a hex private key; `variable` names where it came from, for the error. */
export function walletFromPrivateKey(privateKey: string, variable: string): Wallet {
  const hex = privateKey.startsWith("0x") ? privateKey : `0x${privateKey}`;
  if (!/^0x[0-9a-fA-F]{64}$/.test(hex)) {
    throw new ConfigError(variable, "is not a private key: expected 64 hex digits, optionally prefixed with 0x (the value is not shown)");
  }
  try {
    return new Wallet(hex);
  } catch (e) {
    // A 32-byte value outside the curve order (zero, say) is not a valid key either.
    throw new ConfigError(variable, `is not a valid secp256k1 private key (${(e as Error).message.split(" (")[0]})`);
  }
}

/** A wallet from an encrypted JSON keystore file. */
export async function walletFromKeystore(
  file: string,
  password: string,
  options: { keystoreFile: string; keystorePassword: string; repoRoot?: string },
): Promise<BaseWallet> {
  const resolved = path.resolve(file);
  if (options.repoRoot !== undefined && isInside(path.resolve(options.repoRoot), resolved)) {
    throw new ConfigError(options.keystoreFile, `${resolved} is inside the repository; keep keystores outside it so they are never committed`);
  }
  let json: string;
  try {
    json = readFileSync(resolved, "utf8");
  } catch (e) {
    throw new ConfigError(options.keystoreFile, `cannot read ${resolved}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  try {
    return await Wallet.fromEncryptedJson(json, password);
  } catch (e) {
    const message = (e as Error).message;
    if (/password/i.test(message)) {
      throw new ConfigError(options.keystorePassword, `does not decrypt ${resolved} (wrong password)`);
    }
    throw new ConfigError(options.keystoreFile, `${resolved} is not an encrypted JSON keystore: ${message.split(" (")[0]}`);
  }
}

function nonEmpty(value: string | undefined): string | undefined {
  const trimmed = value?.trim();
  return trimmed === undefined || trimmed === "" ? undefined : trimmed;
}

function isInside(dir: string, file: string): boolean {
  const rel = path.relative(dir, file);
  return rel !== "" && !rel.startsWith("..") && !path.isAbsolute(rel);
}
