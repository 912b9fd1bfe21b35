// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IParticipantRegistry} from "./IParticipantRegistry.sol";

/**
 * @title ParticipantRegistry
 * @notice Who takes part in the market: each participant's wallet account, meter id, the
 * signing key of its meter agent, its kind and whether it is active. Kept by the regulator.
 *
 * @dev Every lookup is O(1): by account, by meter key and by meter id. Participants also get
 * a dense index (0, 1, 2, ...) so that other contracts and agents can page through them with
 * `participantAt` without any loop over storage here.
 */
contract ParticipantRegistry is IParticipantRegistry, AccessControl {
    /// @notice Role allowed to register, re-key, suspend and re-activate participants.
    bytes32 public constant REGULATOR_ROLE = keccak256("REGULATOR_ROLE");

    mapping(address account => Participant) private _participants;
    mapping(address meterKey => address account) private _accountOfMeterKey;
    mapping(bytes32 meterId => address account) private _accountOfMeterId;
    address[] private _accounts;
    address private _slackUnit;

    /// @param admin Account that receives DEFAULT_ADMIN_ROLE and REGULATOR_ROLE.
    constructor(address admin) {
        if (admin == address(0)) revert RegistryZeroAddress();
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(REGULATOR_ROLE, admin);
    }

    // ---------------------------------------------------------------- regulator

    /// @inheritdoc IParticipantRegistry
    function register(Registration calldata r) external onlyRole(REGULATOR_ROLE) {
        _register(r);
    }

    /// @inheritdoc IParticipantRegistry
    function registerBatch(Registration[] calldata rs) external onlyRole(REGULATOR_ROLE) {
        for (uint256 i = 0; i < rs.length; ++i) {
            _register(rs[i]);
        }
    }

    /// @inheritdoc IParticipantRegistry
    function setMeterKey(address account, address newMeterKey) external onlyRole(REGULATOR_ROLE) {
        Participant storage p = _existing(account);
        if (newMeterKey == address(0)) revert RegistryZeroAddress();
        address holder = _accountOfMeterKey[newMeterKey];
        if (holder != address(0)) revert RegistryMeterKeyInUse(newMeterKey, holder);
        address oldKey = p.meterKey;
        delete _accountOfMeterKey[oldKey];
        _accountOfMeterKey[newMeterKey] = account;
        p.meterKey = newMeterKey;
        emit MeterKeyChanged(account, oldKey, newMeterKey);
    }

    /// @inheritdoc IParticipantRegistry
    function suspend(address account) external onlyRole(REGULATOR_ROLE) {
        Participant storage p = _existing(account);
        if (p.status == Status.Suspended) revert RegistryAlreadySuspended(account);
        p.status = Status.Suspended;
        emit ParticipantSuspended(account);
    }

    /// @inheritdoc IParticipantRegistry
    function reactivate(address account) external onlyRole(REGULATOR_ROLE) {
        Participant storage p = _existing(account);
        if (p.status != Status.Suspended) revert RegistryNotSuspended(account);
        p.status = Status.Active;
        emit ParticipantReactivated(account);
    }

    // ---------------------------------------------------------------- views

    /// @inheritdoc IParticipantRegistry
    function participant(address account) external view returns (Participant memory) {
        return _participants[account];
    }

    /// @inheritdoc IParticipantRegistry
    function signerOf(address account) external view returns (address meterKey, Kind kind, Status status) {
        Participant storage p = _participants[account];
        return (p.meterKey, p.kind, p.status);
    }

    /// @inheritdoc IParticipantRegistry
    function isActive(address account) external view returns (bool) {
        return _participants[account].status == Status.Active;
    }

    /// @inheritdoc IParticipantRegistry
    function accountOfMeterKey(address meterKey) external view returns (address) {
        return _accountOfMeterKey[meterKey];
    }

    /// @inheritdoc IParticipantRegistry
    function accountOfMeterId(bytes32 meterId) external view returns (address) {
        return _accountOfMeterId[meterId];
    }

    /// @inheritdoc IParticipantRegistry
    function participantCount() external view returns (uint256) {
        return _accounts.length;
    }

    /// @inheritdoc IParticipantRegistry
    function participantAt(uint256 index) external view returns (address) {
        if (index >= _accounts.length) revert RegistryIndexOutOfRange(index, _accounts.length);
        return _accounts[index];
    }

    /// @inheritdoc IParticipantRegistry
    function slackUnit() external view returns (address) {
        return _slackUnit;
    }

    // ---------------------------------------------------------------- internals

    function _register(Registration calldata r) private {
        if (r.account == address(0) || r.meterKey == address(0)) revert RegistryZeroAddress();
        if (r.meterId == bytes32(0)) revert RegistryZeroMeterId();
        if (_participants[r.account].status != Status.None) revert RegistryAlreadyRegistered(r.account);
        address keyHolder = _accountOfMeterKey[r.meterKey];
        if (keyHolder != address(0)) revert RegistryMeterKeyInUse(r.meterKey, keyHolder);
        address idHolder = _accountOfMeterId[r.meterId];
        if (idHolder != address(0)) revert RegistryMeterIdInUse(r.meterId, idHolder);
        if (r.kind == Kind.SlackUnit) {
            if (_slackUnit != address(0)) revert RegistrySlackUnitAlreadySet(_slackUnit);
            _slackUnit = r.account;
        }
        uint256 index = _accounts.length;
        _participants[r.account] = Participant({
            meterKey: r.meterKey,
            kind: r.kind,
            status: Status.Active,
            index: uint32(index),
            meterId: r.meterId
        });
        _accountOfMeterKey[r.meterKey] = r.account;
        _accountOfMeterId[r.meterId] = r.account;
        _accounts.push(r.account);
        emit ParticipantRegistered(r.account, r.meterId, r.meterKey, r.kind, index);
    }

    function _existing(address account) private view returns (Participant storage p) {
        p = _participants[account];
        if (p.status == Status.None) revert RegistryNotRegistered(account);
    }
}
