// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {IParticipantRegistry} from "../registry/IParticipantRegistry.sol";
import {IMeterLedger} from "./IMeterLedger.sol";

/**
 * @title MeterLedger
 * @notice The metering half of the settlement contract: it accepts smart-meter readings signed
 * by the key registered for each meter, keeps every meter's cumulative registers and the
 * energy of its last slot, and hands each new reading to the billing half (`_billPending`).
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

    /// @dev One storage slot per participant: 32+8+40+40+40+48+48 = 256 bits.
    struct Account {
        uint32 lastSlot; // slot of the last reading; 0 = no reading yet
        bool billed; // whether lastSlot's energy has been billed
        uint40 importWh; // cumulative import register at the end of lastSlot
        uint40 exportWh; // cumulative export register at the end of lastSlot
        int40 deviationWh; // settlement: metered net energy minus schedule, for lastSlot
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
    function submitReading(Reading calldata reading, bytes32 r, bytes32 vs) external {
        _record(reading, r, vs);
    }

    /// @inheritdoc IMeterLedger
    function submitReadings(SignedReading[] calldata readings) external {
        for (uint256 i = 0; i < readings.length; ++i) {
            SignedReading calldata s = readings[i];
            _record(s.reading, s.r, s.vs);
        }
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
     * @dev Bills `a`'s pending slot (`a.lastSlot`, not yet billed) into `a` in memory and
     * returns the tokens to transfer to `account` once `a` is stored.
     */
    function _billPending(address account, Account memory a) internal virtual returns (uint256 payout);

    /// @dev Counts a new reading's net energy, attributed to `slot`, into the slot's totals, against
    /// the account's schedules since `lastSlot`; returns its deviation and its scheduled earnings.
    function _countReading(address account, uint32 lastSlot, uint32 slot, int256 netWh)
        internal
        virtual
        returns (int256 deviationWh, uint256 earned);

    /// @dev Pays `payout` to `account` and closes `slot` if every reading of it is billed.
    function _afterBilling(address account, uint32 slot, uint256 payout) internal virtual;

    function _record(Reading calldata rd, bytes32 r, bytes32 vs) private {
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

        Account memory a = _accounts[rd.account];
        bool baseline = a.lastSlot == 0;
        if (!baseline) {
            if (slot == a.lastSlot) {
                if (rd.importWh == a.importWh && rd.exportWh == a.exportWh) return; // same reading again
                revert ReadingConflict(slot, a.importWh, a.exportWh);
            }
            if (slot < a.lastSlot) revert ReadingSlotBeforeLast(slot, a.lastSlot);
            if (rd.importWh < a.importWh || rd.exportWh < a.exportWh) {
                revert ReadingRegisterDecreased(slot, rd.importWh, rd.exportWh, a.importWh, a.exportWh);
            }
        }
        if (rd.importWh > type(uint40).max || rd.exportWh > type(uint40).max) revert ReadingOutOfRange(slot);
        uint256 importDelta = baseline ? 0 : rd.importWh - a.importWh;
        uint256 exportDelta = baseline ? 0 : rd.exportWh - a.exportWh;
        if (importDelta > type(uint32).max || exportDelta > type(uint32).max) revert ReadingOutOfRange(slot);
        int256 netWh = int256(importDelta) - int256(exportDelta);
        if (netWh > type(int32).max || netWh < type(int32).min) revert ReadingOutOfRange(slot);

        // The previous slot is final by now (readingWindow < slotSeconds), so bill it on the way.
        uint32 billedSlot = a.lastSlot;
        uint256 payout;
        bool billedNow = !baseline && !a.billed;
        if (billedNow) payout = _billPending(rd.account, a);

        a.lastSlot = slot;
        a.billed = baseline; // a baseline has nothing to bill
        a.importWh = uint40(rd.importWh);
        a.exportWh = uint40(rd.exportWh);
        if (baseline) {
            a.deviationWh = 0;
            a.earned = 0;
        } else {
            (int256 deviation, uint256 earned) = _countReading(rd.account, billedSlot, slot, netWh);
            a.deviationWh = SafeCast.toInt40(deviation);
            a.earned = SafeCast.toUint48(earned);
        }
        _accounts[rd.account] = a;
        emit ReadingRecorded(rd.account, slot, rd.importWh, rd.exportWh, uint32(importDelta), uint32(exportDelta));

        if (billedNow) _afterBilling(rd.account, billedSlot, payout);
    }
}
