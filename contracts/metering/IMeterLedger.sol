// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/**
 * @title IMeterLedger
 * @notice Signed smart-meter readings, one per meter and 15-minute slot. See MeterLedger.
 */
interface IMeterLedger {
    /**
     * @notice What a meter agent signs (EIP-712 type
     * `Reading(address account,uint32 slot,uint64 importWh,uint64 exportWh)`): the meter's
     * cumulative registers at the end of `slot`.
     */
    struct Reading {
        address account;
        uint32 slot;
        uint64 importWh;
        uint64 exportWh;
    }

    /// @notice A reading with its EIP-2098 compact signature, as relayed in batches.
    struct SignedReading {
        Reading reading;
        bytes32 r;
        bytes32 vs;
    }

    /// @dev `slot` has not ended yet; readings are accepted from `endsAt`.
    error ReadingSlotNotEnded(uint32 slot, uint256 endsAt);
    /// @dev The reading window of `slot` closed at `deadline`; the energy goes into the next reading.
    error ReadingTooLate(uint32 slot, uint256 deadline);
    /// @dev `account` is not a registered participant.
    error ReadingUnknownAccount(address account);
    /// @dev The reading was signed by `signer`, not by the meter key registered for `account`.
    error ReadingBadSignature(address account, address signer);
    /// @dev `account` is suspended; its readings are refused until it is re-activated.
    error ReadingParticipantSuspended(address account);
    /// @dev The slack unit's position is the neighbourhood's residual; its own meter is not billed.
    error ReadingFromSlackUnit(address account);
    /// @dev `slot` is before the meter's last reading `lastSlot`.
    error ReadingSlotBeforeLast(uint32 slot, uint32 lastSlot);
    /// @dev A register went down: meter registers are cumulative.
    error ReadingRegisterDecreased(uint32 slot, uint64 importWh, uint64 exportWh, uint64 lastImportWh, uint64 lastExportWh);
    /// @dev A different reading for `slot` is stored already.
    error ReadingConflict(uint32 slot, uint64 storedImportWh, uint64 storedExportWh);
    /// @dev A register or a slot's energy is beyond what the ledger stores (40-bit registers, 32-bit
    /// deltas, net energy within +-2^30 Wh, about 1 GWh).
    error ReadingOutOfRange(uint32 slot);

    /// @notice A reading was recorded; `importDeltaWh`/`exportDeltaWh` is the energy attributed to `slot`.
    event ReadingRecorded(
        address indexed account,
        uint32 indexed slot,
        uint64 importWh,
        uint64 exportWh,
        uint32 importDeltaWh,
        uint32 exportDeltaWh
    );
    /// @notice The master asks every meter agent for its reading of `slot`, due by `deadline`.
    event ReadingsRequested(uint32 indexed slot, uint256 deadline);

    /// @notice Records one signed reading. Anyone may submit it: the signature is the authority.
    function submitReading(Reading calldata reading, bytes32 r, bytes32 vs) external;

    /// @notice Records a batch of signed readings, e.g. relayed by the master. Reverts on the first invalid one.
    function submitReadings(SignedReading[] calldata readings) external;

    /// @notice Emits ReadingsRequested for `slot`. Only the master (MASTER_ROLE).
    function requestReadings(uint32 slot) external;

    /// @notice The slot that contains `block.timestamp`.
    function currentSlot() external view returns (uint32);

    /// @notice The last moment a reading of `slot` is accepted; settlement of `slot` may start after it.
    function readingDeadline(uint32 slot) external view returns (uint256);

    /// @notice The EIP-712 digest a meter key signs for `reading`.
    function readingDigest(Reading calldata reading) external view returns (bytes32);

    /// @notice The last reading of `account`: its slot (0 if none yet) and cumulative registers.
    function lastReading(address account) external view returns (uint32 slot, uint64 importWh, uint64 exportWh);
}
