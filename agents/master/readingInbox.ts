import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { isAddress } from "ethers";
import { fromJson, type SignedReading, type SignedReadingJson } from "../chain/readings.js";
import type { Logger } from "../log.js";

const MAX_BODY_BYTES = 4096;
/** Candidates kept per account and slot: a forged post cannot push out the genuine reading. */
const MAX_CANDIDATES = 4;

/**
 * The master's HTTP inbox for signed readings (POST /readings). It only collects: whatever
 * it holds is checked by the contract when relayed, and a reading whose signature does not
 * match its meter key is refused there. The inbox keeps a few distinct candidates per account
 * and slot, so that someone posting a forged reading cannot displace the genuine one; the
 * master relays the first candidate the contract accepts.
 */
export class ReadingInbox {
  private server: Server | undefined;
  private readonly bySlot = new Map<number, Map<string, SignedReading[]>>();
  private readonly waiters = new Set<() => void>();

  constructor(private readonly logger: Logger) {}

  /** Listens on `host:port` (port 0: any free port); returns the base URL. */
  async listen(host = "127.0.0.1", port = 0): Promise<string> {
    const server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, resolve);
    });
    this.server = server;
    const address = server.address() as AddressInfo;
    return `http://${host}:${address.port}`;
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** Adds a reading directly (the HTTP handler and tests use it). */
  add(signed: SignedReading): void {
    const slot = signed.reading.slot;
    let readings = this.bySlot.get(slot);
    if (!readings) this.bySlot.set(slot, (readings = new Map()));
    const key = signed.reading.account.toLowerCase();
    const candidates = readings.get(key) ?? [];
    const same = (x: SignedReading): boolean => x.r === signed.r && x.vs === signed.vs && x.reading.importWh === signed.reading.importWh && x.reading.exportWh === signed.reading.exportWh;
    if (!candidates.some(same) && candidates.length < MAX_CANDIDATES) candidates.push(signed);
    readings.set(key, candidates);
    for (const wake of this.waiters) wake();
  }

  /** Removes and returns the readings held for `slot`: every candidate, in arrival order per account. */
  take(slot: number): SignedReading[] {
    const readings = [...(this.bySlot.get(slot)?.values() ?? [])].flat();
    this.bySlot.delete(slot);
    for (const s of this.bySlot.keys()) if (s < slot) this.bySlot.delete(s); // stale ones can only fail now
    return readings;
  }

  count(slot: number): number {
    return this.bySlot.get(slot)?.size ?? 0;
  }

  /** Resolves when `expected` readings of `slot` are in, or after `timeoutMs`. */
  async waitFor(slot: number, expected: number, timeoutMs: number): Promise<number> {
    if (this.count(slot) >= expected) return this.count(slot);
    await new Promise<void>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(check);
        resolve();
      };
      const check = (): void => {
        if (this.count(slot) >= expected) done();
      };
      const timer = setTimeout(done, timeoutMs);
      this.waiters.add(check);
    });
    return this.count(slot);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (req.method === "GET" && req.url === "/health") return reply(res, 200, { ok: true });
    if (req.method !== "POST" || req.url !== "/readings") return reply(res, 404, { error: "POST /readings only" });
    let body = "";
    for await (const chunk of req) {
      body += chunk;
      if (body.length > MAX_BODY_BYTES) return reply(res, 413, { error: `body over ${MAX_BODY_BYTES} bytes` });
    }
    let signed: SignedReading;
    try {
      signed = parseSignedReading(JSON.parse(body));
    } catch (e) {
      return reply(res, 400, { error: (e as Error).message });
    }
    this.add(signed);
    this.logger({ level: "debug", msg: "reading received", account: signed.reading.account, slot: signed.reading.slot });
    reply(res, 202, { accepted: true });
  }
}

function reply(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
}

/** Checks the shape of a posted reading; the signature itself is checked on chain. */
export function parseSignedReading(value: unknown): SignedReading {
  const j = value as Partial<SignedReadingJson>;
  const r = j?.reading;
  const hex32 = /^0x[0-9a-fA-F]{64}$/;
  const uint = /^[0-9]{1,20}$/;
  if (!r || typeof r !== "object") throw new Error("reading: missing");
  if (typeof r.account !== "string" || !isAddress(r.account)) throw new Error("reading.account: not an address");
  if (!Number.isInteger(r.slot) || r.slot! < 0 || r.slot! > 0xffffffff) throw new Error("reading.slot: not a uint32");
  if (typeof r.importWh !== "string" || !uint.test(r.importWh)) throw new Error("reading.importWh: not a decimal uint");
  if (typeof r.exportWh !== "string" || !uint.test(r.exportWh)) throw new Error("reading.exportWh: not a decimal uint");
  if (typeof j.r !== "string" || !hex32.test(j.r)) throw new Error("r: not 32 bytes of hex");
  if (typeof j.vs !== "string" || !hex32.test(j.vs)) throw new Error("vs: not 32 bytes of hex");
  return fromJson(j as SignedReadingJson);
}
