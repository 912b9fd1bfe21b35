// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/**
 * @title IParticipantRegistry
 * @notice Who takes part in the market, and with which meter key. See ParticipantRegistry.
 */
interface IParticipantRegistry {
    /// @notice What a participant is, physically. The slack unit is the supplier and buyer of last resort.
    enum Kind {
        Consumer,
        Prosumer,
        Producer,
        Storage,
        FlexibleLoad,
        SlackUnit
    }

    /// @notice `None` marks an account that was never registered.
    enum Status {
        None,
        Active,
        Suspended
    }

    /// @dev The first four fields pack into one storage slot.
    struct Participant {
        address meterKey;
        Kind kind;
        Status status;
        uint32 index;
        bytes32 meterId;
    }

    /// @notice What the regulator supplies to register one participant.
    struct Registration {
        address account;
        bytes32 meterId;
        address meterKey;
        Kind kind;
    }

    /// @dev An account or meter key was the zero address.
    error RegistryZeroAddress();
    /// @dev The meter id was zero.
    error RegistryZeroMeterId();
    /// @dev `account` is registered already.
    error RegistryAlreadyRegistered(address account);
    /// @dev `account` was never registered.
    error RegistryNotRegistered(address account);
    /// @dev `meterKey` already signs for `account`.
    error RegistryMeterKeyInUse(address meterKey, address account);
    /// @dev `meterId` already belongs to `account`.
    error RegistryMeterIdInUse(bytes32 meterId, address account);
    /// @dev The market has a slack unit already, `slackUnit`.
    error RegistrySlackUnitAlreadySet(address slackUnit);
    /// @dev `account` is suspended already.
    error RegistryAlreadySuspended(address account);
    /// @dev `account` is not suspended, so it cannot be re-activated.
    error RegistryNotSuspended(address account);
    /// @dev `index` is not below the participant count `count`.
    error RegistryIndexOutOfRange(uint256 index, uint256 count);

    /// @notice A participant was registered with dense index `index`.
    event ParticipantRegistered(
        address indexed account,
        bytes32 indexed meterId,
        address indexed meterKey,
        Kind kind,
        uint256 index
    );
    /// @notice The meter agent's signing key of `account` changed (a replaced Pi, say).
    event MeterKeyChanged(address indexed account, address indexed oldMeterKey, address indexed newMeterKey);
    /// @notice `account` was suspended: its readings and orders are refused until re-activation.
    event ParticipantSuspended(address indexed account);
    /// @notice `account` was re-activated.
    event ParticipantReactivated(address indexed account);

    /// @notice Registers one participant. Only the regulator.
    function register(Registration calldata r) external;

    /// @notice Registers many participants in one transaction. Only the regulator.
    function registerBatch(Registration[] calldata rs) external;

    /// @notice Replaces the meter agent key of `account`, e.g. after a Pi is replaced. Only the regulator.
    function setMeterKey(address account, address newMeterKey) external;

    /// @notice Suspends `account`. Only the regulator.
    function suspend(address account) external;

    /// @notice Re-activates a suspended `account`. Only the regulator.
    function reactivate(address account) external;

    /// @notice The record of `account` (status None if unknown).
    function participant(address account) external view returns (Participant memory);

    /// @notice The fields of `account` that readings and orders check, read from one storage slot.
    function signerOf(address account) external view returns (address meterKey, Kind kind, Status status);

    /// @notice Whether `account` is registered and not suspended.
    function isActive(address account) external view returns (bool);

    /// @notice The account whose meter agent signs with `meterKey`, or zero.
    function accountOfMeterKey(address meterKey) external view returns (address);

    /// @notice The account that owns meter `meterId`, or zero.
    function accountOfMeterId(bytes32 meterId) external view returns (address);

    /// @notice How many participants were ever registered.
    function participantCount() external view returns (uint256);

    /// @notice The account with dense index `index`.
    function participantAt(uint256 index) external view returns (address);

    /// @notice The slack unit's account, or zero before one is registered.
    function slackUnit() external view returns (address);
}
