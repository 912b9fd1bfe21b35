/**
 * Base class of every error the agents and tools raise on purpose. `code` is stable for
 * programs; the message says what was wrong and what to do about it, for people.
 */
export class MarketError extends Error {
  constructor(
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A configuration file, option or environment variable is missing or invalid. */
export class ConfigError extends MarketError {
  constructor(
    readonly field: string,
    problem: string,
  ) {
    super("CONFIG", `${field}: ${problem}`);
  }
}
