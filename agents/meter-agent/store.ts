import { createHash } from "node:crypto";
import { open, readFile, readdir, rename, unlink } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { MarketError } from "../errors.js";

/** The state file exists but cannot be trusted: truncated, not JSON, checksum or shape wrong. */
export class StoreCorruptError extends MarketError {
  constructor(
    readonly file: string,
    problem: string,
    cause?: unknown,
  ) {
    super(
      "STORE_CORRUPT",
      `state file ${file} is corrupt (${problem}). It was left as it is: restore it from a backup, or, after ` +
        "checking what it held (pending readings are not yet on chain), move it away to start afresh",
      cause === undefined ? undefined : { cause },
    );
  }
}

/** The state file was written by a different version of the program. */
export class StoreVersionError extends MarketError {
  constructor(
    readonly file: string,
    readonly found: unknown,
    readonly expected: number,
  ) {
    super(
      "STORE_VERSION",
      `state file ${file} has version ${JSON.stringify(found)}, this program reads version ${expected}; ` +
        "run the version that wrote it, or migrate the file",
    );
  }
}

/** The state file could not be read or written (permissions, disk full, missing folder). */
export class StoreAccessError extends MarketError {
  constructor(
    readonly file: string,
    action: "read" | "write",
    cause: unknown,
  ) {
    super("STORE_ACCESS", `cannot ${action} state file ${file}: ${(cause as Error).message ?? String(cause)}`, { cause });
  }
}

export interface JsonStoreOptions<T> {
  /** Version of the state's shape; a file of another version is refused, not guessed at. */
  version?: number;
  /**
   * Checks a loaded (or about to be saved) state and returns it typed; throws to reject it.
   * Without it, only the envelope and checksum are checked.
   */
  validate?: (state: unknown) => T;
}

interface Envelope {
  version: number;
  sha256: string;
  state: unknown;
}

function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/**
 * A small durable JSON state store, for one writer process.
 *
 * save() writes a temporary file in the same folder, fsyncs it, renames it over the state
 * file and fsyncs the folder: a crash or power cut at any moment leaves either the old or
 * the new file, never a mix. The file carries a version and a SHA-256 of the state, so a
 * damaged file is reported, never silently replaced by a fresh state.
 */
export class JsonStore<T> {
  readonly file: string;
  private readonly dir: string;
  private readonly version: number;
  private readonly validate: ((state: unknown) => T) | undefined;
  private writes: Promise<void> = Promise.resolve();
  private counter = 0;

  constructor(file: string, options: JsonStoreOptions<T> = {}) {
    this.file = resolve(file);
    this.dir = dirname(this.file);
    this.version = options.version ?? 1;
    if (!Number.isSafeInteger(this.version) || this.version < 1) throw new RangeError(`version must be a positive integer, got ${this.version}`);
    this.validate = options.validate;
  }

  /** The saved state, or undefined when none was ever saved. */
  async load(): Promise<T | undefined> {
    let text: string;
    try {
      text = await readFile(this.file, "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw new StoreAccessError(this.file, "read", error);
    }
    await this.removeLeftovers();
    return this.parse(text);
  }

  /**
   * Durably replaces the state. The state is serialised at the call, so the caller may
   * change its object right after; saves run one after another in call order.
   */
  save(state: T): Promise<void> {
    let text: string;
    try {
      text = this.serialize(state);
    } catch (error) {
      return Promise.reject(error);
    }
    const write = this.writes.then(() => this.write(text));
    this.writes = write.catch(() => {});
    return write;
  }

  private serialize(state: T): string {
    let stateJson: string | undefined;
    try {
      stateJson = JSON.stringify(state);
    } catch (error) {
      throw new TypeError(`state for ${this.file} is not JSON-serialisable (bigints must be stored as strings): ${(error as Error).message}`);
    }
    if (stateJson === undefined) throw new TypeError(`state for ${this.file} is not JSON-serialisable`);
    // Never write a file that load() would refuse.
    if (this.validate !== undefined) this.validate(JSON.parse(stateJson));
    const envelope: Envelope = { version: this.version, sha256: sha256(stateJson), state: JSON.parse(stateJson) };
    return `${JSON.stringify(envelope, null, 2)}\n`;
  }

  private parse(text: string): T {
    let envelope: unknown;
    try {
      envelope = JSON.parse(text);
    } catch (error) {
      throw new StoreCorruptError(this.file, text.length === 0 ? "empty file" : `not valid JSON: ${(error as Error).message}`, error);
    }
    if (typeof envelope !== "object" || envelope === null || Array.isArray(envelope) || !("state" in envelope)) {
      throw new StoreCorruptError(this.file, "not a state file: expected an object with version, sha256 and state");
    }
    const { version, sha256: digest, state } = envelope as Partial<Envelope>;
    if (version !== this.version) throw new StoreVersionError(this.file, version, this.version);
    // JSON.stringify(JSON.parse(x)) reproduces what save() hashed, so any change to the state shows.
    if (typeof digest !== "string" || digest !== sha256(JSON.stringify(state))) {
      throw new StoreCorruptError(this.file, "checksum mismatch: the state was altered after it was written");
    }
    if (this.validate === undefined) return state as T;
    try {
      return this.validate(state);
    } catch (error) {
      throw new StoreCorruptError(this.file, `state fails validation: ${(error as Error).message}`, error);
    }
  }

  private tempPrefix(): string {
    return `.${basename(this.file)}.`;
  }

  private async write(text: string): Promise<void> {
    this.counter += 1;
    const temp = join(this.dir, `${this.tempPrefix()}${process.pid}.${this.counter}.tmp`);
    try {
      const handle = await open(temp, "wx", 0o600);
      try {
        await handle.writeFile(text, "utf8");
        await handle.sync(); // the data is on disk before the name points at it
      } finally {
        await handle.close();
      }
      await rename(temp, this.file);
      await syncDirectory(this.dir); // the rename itself is on disk
    } catch (error) {
      await unlink(temp).catch(() => {});
      throw new StoreAccessError(this.file, "write", error);
    }
  }

  /**
   * Temporary files of writes that a crash interrupted; they never became the state.
   * This process's own are skipped: one of them may be a save in progress.
   */
  private async removeLeftovers(): Promise<void> {
    const prefix = this.tempPrefix();
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const leftovers = names.filter(
      (n) => n.startsWith(prefix) && n.endsWith(".tmp") && !n.startsWith(`${prefix}${process.pid}.`),
    );
    await Promise.all(leftovers.map((n) => unlink(join(this.dir, n)).catch(() => {})));
  }
}

async function syncDirectory(dir: string): Promise<void> {
  if (process.platform === "win32") return; // Windows cannot open a folder for fsync; NTFS journals renames
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
