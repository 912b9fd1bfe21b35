// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {IParticipantRegistry} from "../registry/IParticipantRegistry.sol";
import {IMeterLedger} from "./IMeterLedger.sol";

/**
 * @title MeterLedger
 * @notice The metering half of the settlement contract: the rules a smart-meter reading must
 * follow, and each meter's cumulative registers. What a reading does to money is the
 * settlement's (`Settlement`), which checks readings with `_checkReading` and keeps the account
 * word with `_loadAccount` and `_storeAccount`.
 *
 * @dev Rules for a reading of slot S, sent after S ends and up to `readingWindow` later:
 * - it must be signed (EIP-712) by the meter key the registry holds for the account; whoever
 *   relays it cannot change it without breaking the signature;
 * - registers are cumulative: never lower than the last reading's;
 * - S must be after the meter's last reading; the identical reading sent again is a no-op,
 *   a different one for the same slot is a conflict.
 *
 * Gaps: a meter that misses slots (offline agent, late relay) is not lost to billing. Its next
 * reading carries the whole register difference since the last one, and all of it is
 * attributed to the slot of that next reading, billed at that slot's prices. The first
 * reading of a meter is its baseline: it records the registers and bills nothing, because the
 * energy a meter counted before its owner joined the market is not the market's.
 *
 * Storage: one slot per participant (`Account`) holds the registers, the last slot's energy
 * and the billing deposit, so recording a reading and billing the previous one costs one
 * storage write per participant.
 */
abstract contract MeterLedger is IMeterLedger, EIP712 {
    bytes32 private constant READING_TYPEHASH =
        keccak256("Reading(address account,uint32 slot,uint64 importWh,uint64 exportWh)");
    /// @dev Largest net energy of one reading (about 1 GWh), so that a deviation from schedules
    /// (at most MAX_SCHEDULE_GAP slots of 2 * 2^24 Wh) still fits the account's 32 bits.
    int256 private constant MAX_NET_WH = 2 ** 30;

    /// @dev One storage slot per participant: 32+8+8+40+40+32+48+48 = 256 bits.
    struct Account {
        uint32 lastSlot; // slot of the last reading; 0 = no reading yet
        bool billed; // whether lastSlot's energy has been billed
        bool inDebt; // settlement: the account has debt, so what it earns repays it first
        uint40 importWh; // cumulative import register at the end of lastSlot
        uint40 exportWh; // cumulative export register at the end of lastSlot
        int32 deviationWh; // settlement: metered net energy minus schedule, for lastSlot
        uint48 earned; // settlement: what the markets' scheduled sales earn, token base units
        uint48 deposit; // settlement: billing deposit, token base units
    }

    /// @notice The registry that holds each participant's meter key.
    IParticipantRegistry public immutable registry;
    /// @notice Length of a slot in seconds (900 in production).
    uint256 public immutable slotSeconds;
    /// @notice Seconds after a slot's end during which its readings are accepted.
    uint256 public immutable readingWindow;

    mapping(address account => Account) internal _accounts;

    /// @dev The reading window must end before the next slot ends, so that by the time any
    /// reading of slot S+1 can arrive, slot S is final and can be billed.
    error MeterLedgerBadTiming(uint256 slotSeconds, uint256 readingWindow);

    constructor(IParticipantRegistry registry_, uint256 slotSeconds_, uint256 readingWindow_) {
        if (slotSeconds_ == 0 || readingWindow_ >= slotSeconds_) {
            revert MeterLedgerBadTiming(slotSeconds_, readingWindow_);
        }
        registry = registry_;
        slotSeconds = slotSeconds_;
        readingWindow = readingWindow_;
    }

    /// @inheritdoc IMeterLedger
    function currentSlot() public view returns (uint32) {
        return uint32(block.timestamp / slotSeconds);
    }

    /// @inheritdoc IMeterLedger
    function readingDeadline(uint32 slot) public view returns (uint256) {
        return (uint256(slot) + 1) * slotSeconds + readingWindow;
    }

    /// @inheritdoc IMeterLedger
    function readingDigest(Reading calldata reading) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(abi.encode(READING_TYPEHASH, reading.account, reading.slot, reading.importWh, reading.exportWh))
        );
    }

    /// @inheritdoc IMeterLedger
    function lastReading(address account) external view returns (uint32 slot, uint64 importWh, uint64 exportWh) {
        Account storage a = _accounts[account];
        return (a.lastSlot, a.importWh, a.exportWh);
    }

    /**
     * @dev Checks reading `rd` (signature, timing, participant, registers) against `a`, the
     * account as stored. Returns whether it repeats the stored reading (a no-op), and the energy
     * it counts: imported and exported since the last reading (0 for a baseline).
     */
    function _checkReading(Reading calldata rd, bytes32 r, bytes32 vs, Account memory a)
        internal
        view
        returns (bool repeat, uint256 importDelta, uint256 exportDelta)
    {
        uint32 slot = rd.slot;
        uint256 endsAt = (uint256(slot) + 1) * slotSeconds;
        if (block.timestamp < endsAt) revert ReadingSlotNotEnded(slot, endsAt);
        if (block.timestamp > endsAt + readingWindow) revert ReadingTooLate(slot, endsAt + readingWindow);

        (address meterKey, IParticipantRegistry.Kind kind, IParticipantRegistry.Status status) =
            registry.signerOf(rd.account);
        if (status == IParticipantRegistry.Status.None) revert ReadingUnknownAccount(rd.account);
        address signer = ECDSA.recover(readingDigest(rd), r, vs);
        if (signer != meterKey) revert ReadingBadSignature(rd.account, signer);
        if (status != IParticipantRegistry.Status.Active) revert ReadingParticipantSuspended(rd.account);
        if (kind == IParticipantRegistry.Kind.SlackUnit) revert ReadingFromSlackUnit(rd.account);

        uint64 importWh = rd.importWh;
        uint64 exportWh = rd.exportWh;
        if (a.lastSlot != 0) {
            if (slot == a.lastSlot) {
                if (importWh == a.importWh && exportWh == a.exportWh) return (true, 0, 0); // same reading again
                revert ReadingConflict(slot, a.importWh, a.exportWh);
            }
            if (slot < a.lastSlot) revert ReadingSlotBeforeLast(slot, a.lastSlot);
            if (importWh < a.importWh || exportWh < a.exportWh) {
                revert ReadingRegisterDecreased(slot, importWh, exportWh, a.importWh, a.exportWh);
            }
            unchecked {
                importDelta = importWh - a.importWh; // not below, checked above
                exportDelta = exportWh - a.exportWh;
            }
        }
        if (importWh > type(uint40).max || exportWh > type(uint40).max) revert ReadingOutOfRange(slot);
        if (importDelta > type(uint32).max || exportDelta > type(uint32).max) revert ReadingOutOfRange(slot);
        int256 netWh = int256(importDelta) - int256(exportDelta);
        if (netWh > MAX_NET_WH || netWh < -MAX_NET_WH) revert ReadingOutOfRange(slot);
    }

    /// @dev `account`'s record in one storage read (a struct copy would read it field by field).
    function _loadAccount(address account) internal view returns (Account memory a) {
        Account storage stored = _accounts[account];
        uint256 word;
        assembly ("memory-safe") {
            word := sload(stored.slot)
        }
        a.lastSlot = uint32(word);
        a.billed = uint8(word >> 32) != 0;
        a.inDebt = uint8(word >> 40) != 0;
        a.importWh = uint40(word >> 48);
        a.exportWh = uint40(word >> 88);
        a.deviationWh = int32(uint32(word >> 128));
        a.earned = uint48(word >> 160);
        a.deposit = uint48(word >> 208);
    }

    /// @dev Stores `a` as `account`'s record in one write, in the layout of `Account`.
    function _storeAccount(address account, Account memory a) internal {
        uint256 word = uint256(a.lastSlot) | (a.billed ? 1 << 32 : 0) | (a.inDebt ? 1 << 40 : 0)
            | (uint256(a.importWh) << 48) | (uint256(a.exportWh) << 88) | (uint256(uint32(a.deviationWh)) << 128)
            | (uint256(a.earned) << 160) | (uint256(a.deposit) << 208);
        Account storage stored = _accounts[account];
        assembly ("memory-safe") {
            sstore(stored.slot, word)
        }
    }
}
