import { Signature, type TypedDataDomain, type Wallet } from "ethers";

/** A meter reading as the Settlement contract's EIP-712 `Reading` type has it. */
export interface Reading {
  account: string;
  slot: number;
  importWh: bigint;
  exportWh: bigint;
}

/** A reading with its EIP-2098 compact signature, the shape `submitReadings` takes. */
export interface SignedReading {
  reading: Reading;
  r: string;
  vs: string;
}

export const READING_TYPES = {
  Reading: [
    { name: "account", type: "address" },
    { name: "slot", type: "uint32" },
    { name: "importWh", type: "uint64" },
    { name: "exportWh", type: "uint64" },
  ],
};

/** The EIP-712 domain of the Settlement contract at `settlement` on chain `chainId`. */
export function readingDomain(chainId: bigint, settlement: string): TypedDataDomain {
  return { name: "ProsumerMarket Settlement", version: "1", chainId, verifyingContract: settlement };
}

/** Signs `reading` with the meter key `wallet`, as the meter agent does. */
export async function signReading(wallet: Wallet, domain: TypedDataDomain, reading: Reading): Promise<SignedReading> {
  const signature = Signature.from(await wallet.signTypedData(domain, READING_TYPES, reading));
  return { reading, r: signature.r, vs: signature.yParityAndS };
}

/** JSON-safe form of a signed reading (bigints as decimal strings), for files and HTTP. */
export interface SignedReadingJson {
  reading: { account: string; slot: number; importWh: string; exportWh: string };
  r: string;
  vs: string;
}

export function toJson(s: SignedReading): SignedReadingJson {
  const { reading } = s;
  return {
    reading: { account: reading.account, slot: reading.slot, importWh: reading.importWh.toString(), exportWh: reading.exportWh.toString() },
    r: s.r,
    vs: s.vs,
  };
}

export function fromJson(j: SignedReadingJson): SignedReading {
  return {
    reading: { account: j.reading.account, slot: j.reading.slot, importWh: BigInt(j.reading.importWh), exportWh: BigInt(j.reading.exportWh) },
    r: j.r,
    vs: j.vs,
  };
}
