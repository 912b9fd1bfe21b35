// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {IParticipantRegistry} from "./IParticipantRegistry.sol";
import {ParticipantRegistry} from "./ParticipantRegistry.sol";

// Fuzz and invariant tests of ParticipantRegistry, run by `npx hardhat test solidity`. forge-std is
// not available here, so checks are plain `require`s and expected reverts are caught with try/catch
// and compared with the exact custom error they must carry.

/// @dev Shared helpers.
abstract contract ParticipantRegistryTestBase {
    uint256 internal constant KINDS = 6; // IParticipantRegistry.Kind has six members

    function _bound(uint256 x, uint256 min, uint256 max) internal pure returns (uint256) {
        require(min <= max, "bound: min > max");
        return min + (x % (max - min + 1));
    }

    function _kind(uint256 seed) internal pure returns (IParticipantRegistry.Kind) {
        return IParticipantRegistry.Kind(seed % KINDS);
    }

    function _nonZero(address a, address fallback_) internal pure returns (address) {
        return a == address(0) ? fallback_ : a;
    }

    function _nonZero(bytes32 x, bytes32 fallback_) internal pure returns (bytes32) {
        return x == bytes32(0) ? fallback_ : x;
    }

    function _requireError(bytes memory reason, bytes memory expected, string memory message) internal pure {
        require(keccak256(reason) == keccak256(expected), message);
    }

    /// @dev Requires that every lookup of `account` agrees with the record stored for it.
    function _requireConsistent(ParticipantRegistry registry, address account, uint256 index) internal view {
        IParticipantRegistry.Participant memory p = registry.participant(account);
        require(p.status != IParticipantRegistry.Status.None, "indexed account has no record");
        require(p.index == index, "record index != position");
        require(registry.participantAt(index) == account, "participantAt(index) != account");
        require(p.meterKey != address(0), "stored meter key is zero");
        require(p.meterId != bytes32(0), "stored meter id is zero");
        require(registry.accountOfMeterKey(p.meterKey) == account, "meter key does not map back to account");
        require(registry.accountOfMeterId(p.meterId) == account, "meter id does not map back to account");
        require(registry.isActive(account) == (p.status == IParticipantRegistry.Status.Active), "isActive != status");
        if (p.kind == IParticipantRegistry.Kind.SlackUnit) {
            require(registry.slackUnit() == account, "slack unit participant is not the slack unit");
        }
    }
}

contract ParticipantRegistryFuzzTest is ParticipantRegistryTestBase {
    ParticipantRegistry internal registry;

    function setUp() public {
        registry = new ParticipantRegistry(address(this));
    }

    function _registration(
        address account,
        bytes32 meterId,
        address meterKey,
        IParticipantRegistry.Kind kind
    ) internal pure returns (IParticipantRegistry.Registration memory) {
        return IParticipantRegistry.Registration({account: account, meterId: meterId, meterKey: meterKey, kind: kind});
    }

    /// Any registration either stores every field with all three lookups agreeing, or, when a field
    /// is zero, reverts with the matching error and stores nothing.
    function testFuzz_registerStoresEveryFieldAndLookupsAgree(
        address account,
        bytes32 meterId,
        address meterKey,
        uint8 kindSeed
    ) public {
        IParticipantRegistry.Kind kind = _kind(kindSeed);
        IParticipantRegistry.Registration memory r = _registration(account, meterId, meterKey, kind);

        if (account == address(0) || meterKey == address(0) || meterId == bytes32(0)) {
            bytes memory expected = (account == address(0) || meterKey == address(0))
                ? abi.encodeWithSelector(IParticipantRegistry.RegistryZeroAddress.selector)
                : abi.encodeWithSelector(IParticipantRegistry.RegistryZeroMeterId.selector);
            try registry.register(r) {
                revert("registration with a zero field succeeded");
            } catch (bytes memory reason) {
                _requireError(reason, expected, "wrong error for a zero field");
            }
            require(registry.participantCount() == 0, "a failed registration was counted");
            return;
        }

        registry.register(r);

        IParticipantRegistry.Participant memory p = registry.participant(account);
        require(p.meterKey == meterKey, "meter key not stored");
        require(p.meterId == meterId, "meter id not stored");
        require(p.kind == kind, "kind not stored");
        require(p.status == IParticipantRegistry.Status.Active, "not active after registration");
        require(p.index == 0, "first participant index != 0");
        require(registry.participantCount() == 1, "count != 1");
        require(registry.slackUnit() == (kind == IParticipantRegistry.Kind.SlackUnit ? account : address(0)), "slack unit");
        _requireConsistent(registry, account, 0);
    }

    /// A second registration drawn from small pools (so that accounts, keys and ids collide often)
    /// either succeeds with consistent lookups, or reverts with the first applicable error, naming
    /// the current holder, and changes nothing.
    function testFuzz_secondRegistrationCollisions(
        uint8[3] calldata picks1,
        uint8[3] calldata picks2,
        uint8 kindSeed1,
        uint8 kindSeed2
    ) public {
        address a1 = address(uint160(0x1000 + (picks1[0] % 3)));
        address k1 = address(uint160(0x2000 + (picks1[1] % 3)));
        bytes32 id1 = bytes32(uint256(0x3000 + (picks1[2] % 3)));
        // Account pool and key pool overlap (0x1000 is both), so an account may also be used as a key.
        address a2 = address(uint160(0x1000 + (picks2[0] % 3)));
        address k2 = picks2[1] % 4 == 3 ? address(0x1000) : address(uint160(0x2000 + (picks2[1] % 3)));
        bytes32 id2 = bytes32(uint256(0x3000 + (picks2[2] % 3)));
        IParticipantRegistry.Kind kind1 = _kind(kindSeed1);
        IParticipantRegistry.Kind kind2 = _kind(kindSeed2);

        registry.register(_registration(a1, id1, k1, kind1));

        bytes memory expected;
        if (a2 == a1) {
            expected = abi.encodeWithSelector(IParticipantRegistry.RegistryAlreadyRegistered.selector, a1);
        } else if (k2 == k1) {
            expected = abi.encodeWithSelector(IParticipantRegistry.RegistryMeterKeyInUse.selector, k2, a1);
        } else if (id2 == id1) {
            expected = abi.encodeWithSelector(IParticipantRegistry.RegistryMeterIdInUse.selector, id2, a1);
        } else if (kind1 == IParticipantRegistry.Kind.SlackUnit && kind2 == IParticipantRegistry.Kind.SlackUnit) {
            expected = abi.encodeWithSelector(IParticipantRegistry.RegistrySlackUnitAlreadySet.selector, a1);
        }

        try registry.register(_registration(a2, id2, k2, kind2)) {
            require(expected.length == 0, "a colliding registration succeeded");
            require(registry.participantCount() == 2, "count != 2");
            _requireConsistent(registry, a1, 0);
            _requireConsistent(registry, a2, 1);
        } catch (bytes memory reason) {
            require(expected.length != 0, "a valid second registration reverted");
            _requireError(reason, expected, "wrong error for a collision");
            require(registry.participantCount() == 1, "a failed registration was counted");
            _requireConsistent(registry, a1, 0);
            if (a2 != a1) {
                require(
                    registry.participant(a2).status == IParticipantRegistry.Status.None,
                    "a failed registration left a record"
                );
            }
        }
    }

    /// Re-keying frees the old key (it maps to zero), maps the new key to the account, and leaves the
    /// rest of the record alone; a zero key or a key in use is refused with the matching error.
    function testFuzz_setMeterKeyMovesTheKey(
        address account,
        bytes32 meterId,
        address oldKey,
        address newKey,
        uint8 kindSeed
    ) public {
        account = _nonZero(account, address(0xA11CE));
        meterId = _nonZero(meterId, bytes32(uint256(1)));
        oldKey = _nonZero(oldKey, address(0x0D1D));
        IParticipantRegistry.Kind kind = _kind(kindSeed);
        registry.register(_registration(account, meterId, oldKey, kind));

        bytes memory expected;
        if (newKey == address(0)) {
            expected = abi.encodeWithSelector(IParticipantRegistry.RegistryZeroAddress.selector);
        } else if (newKey == oldKey) {
            expected = abi.encodeWithSelector(IParticipantRegistry.RegistryMeterKeyInUse.selector, newKey, account);
        }

        try registry.setMeterKey(account, newKey) {
            require(expected.length == 0, "an invalid re-key succeeded");
            require(registry.accountOfMeterKey(oldKey) == address(0), "old key still maps to an account");
            require(registry.accountOfMeterKey(newKey) == account, "new key does not map to the account");
            IParticipantRegistry.Participant memory p = registry.participant(account);
            require(p.meterKey == newKey, "record keeps the old key");
            require(p.meterId == meterId, "re-key changed the meter id");
            require(p.kind == kind, "re-key changed the kind");
            require(p.index == 0, "re-key changed the index");
            require(p.status == IParticipantRegistry.Status.Active, "re-key changed the status");
        } catch (bytes memory reason) {
            require(expected.length != 0, "a valid re-key reverted");
            _requireError(reason, expected, "wrong error for an invalid re-key");
            require(registry.accountOfMeterKey(oldKey) == account, "failed re-key freed the old key");
            require(registry.participant(account).meterKey == oldKey, "failed re-key changed the record");
        }
        _requireConsistent(registry, account, 0);
        require(registry.accountOfMeterId(meterId) == account, "meter id lookup broken by re-key");
    }

    /// A key held by another participant cannot be taken, and the freed key can be reused.
    function testFuzz_setMeterKeyRespectsOtherParticipants(address keyA, address keyB, address keyC) public {
        keyA = _nonZero(keyA, address(0xA));
        keyB = _nonZero(keyB, address(0xB));
        keyC = _nonZero(keyC, address(0xC));
        if (keyB == keyA) keyB = address(uint160(keyA) ^ 1);
        if (keyB == address(0)) keyB = address(0xB);
        address alice = address(0xA11CE);
        address bob = address(0xB0B);
        registry.register(_registration(alice, bytes32("MTR-A"), keyA, IParticipantRegistry.Kind.Consumer));
        registry.register(_registration(bob, bytes32("MTR-B"), keyB, IParticipantRegistry.Kind.Prosumer));

        try registry.setMeterKey(alice, keyB) {
            revert("took another participant's key");
        } catch (bytes memory reason) {
            _requireError(
                reason,
                abi.encodeWithSelector(IParticipantRegistry.RegistryMeterKeyInUse.selector, keyB, bob),
                "wrong error for a taken key"
            );
        }

        if (keyC == keyA || keyC == keyB) return; // covered above and by testFuzz_setMeterKeyMovesTheKey
        registry.setMeterKey(bob, keyC);
        require(registry.accountOfMeterKey(keyB) == address(0), "bob's old key still mapped");
        registry.setMeterKey(alice, keyB);
        require(registry.accountOfMeterKey(keyB) == alice, "freed key not reusable");
        require(registry.accountOfMeterKey(keyA) == address(0), "alice's old key still mapped");
        require(registry.accountOfMeterKey(keyC) == bob, "bob's new key not mapped");
        _requireConsistent(registry, alice, 0);
        _requireConsistent(registry, bob, 1);
    }

    /// registerBatch gives n participants the dense indices 0..n-1, in order, and index n is out of range.
    function testFuzz_indicesAreDense(uint8 count, uint256 seed, uint8 split) public {
        uint256 n = _bound(count, 1, 24);
        uint256 firstBatch = _bound(split, 0, n);
        IParticipantRegistry.Registration[] memory batch1 = new IParticipantRegistry.Registration[](firstBatch);
        IParticipantRegistry.Registration[] memory batch2 = new IParticipantRegistry.Registration[](n - firstBatch);
        address[] memory accounts = new address[](n);
        for (uint256 i = 0; i < n; ++i) {
            bytes32 h = keccak256(abi.encode(seed, i));
            accounts[i] = address(uint160(uint256(h)) | 1);
            IParticipantRegistry.Registration memory r = _registration(
                accounts[i],
                keccak256(abi.encode(h, "id")),
                address(uint160(uint256(keccak256(abi.encode(h, "key")))) | 1),
                // at most one slack unit: only the first participant may be one
                i == 0 ? _kind(seed) : _kind(uint256(h) % (KINDS - 1))
            );
            if (i < firstBatch) batch1[i] = r;
            else batch2[i - firstBatch] = r;
        }

        registry.registerBatch(batch1);
        require(registry.participantCount() == firstBatch, "count after first batch");
        // The second part one by one, to mix both entry points.
        for (uint256 i = 0; i < batch2.length; ++i) registry.register(batch2[i]);

        require(registry.participantCount() == n, "count != n");
        for (uint256 i = 0; i < n; ++i) {
            _requireConsistent(registry, accounts[i], i);
        }
        try registry.participantAt(n) returns (address) {
            revert("participantAt(count) did not revert");
        } catch (bytes memory reason) {
            _requireError(
                reason,
                abi.encodeWithSelector(IParticipantRegistry.RegistryIndexOutOfRange.selector, n, n),
                "wrong error for an index out of range"
            );
        }
    }

    /// Suspension and reactivation flip isActive and nothing else.
    function testFuzz_suspendReactivateKeepLookups(address account, bytes32 meterId, address meterKey, uint8 flips) public {
        account = _nonZero(account, address(0xA11CE));
        meterId = _nonZero(meterId, bytes32(uint256(1)));
        meterKey = _nonZero(meterKey, address(0x0D1D));
        registry.register(_registration(account, meterId, meterKey, IParticipantRegistry.Kind.Prosumer));
        uint256 n = _bound(flips, 0, 8);
        for (uint256 i = 0; i < n; ++i) {
            if (i % 2 == 0) registry.suspend(account);
            else registry.reactivate(account);
            require(registry.isActive(account) == (i % 2 == 1), "isActive after flip");
            _requireConsistent(registry, account, 0);
        }
        IParticipantRegistry.Participant memory p = registry.participant(account);
        require(
            p.status == (n % 2 == 1 ? IParticipantRegistry.Status.Suspended : IParticipantRegistry.Status.Active),
            "status after flips"
        );
    }
}

/// @dev What the invariant fuzzer drives: registrations, batch registrations, re-keys, suspensions and
/// reactivations drawn from small pools, so that collisions are frequent. Calls that the registry
/// refuses are swallowed; the invariants check what was stored.
contract ParticipantRegistryHandler is ParticipantRegistryTestBase {
    uint256 internal constant POOL = 12;

    ParticipantRegistry public immutable registry;
    uint256 public ghostRegistered;
    uint256 public ghostRekeyed;

    constructor(ParticipantRegistry registry_) {
        registry = registry_;
    }

    function poolSize() external pure returns (uint256) {
        return POOL;
    }

    function accountAt(uint256 i) public pure returns (address) {
        return address(uint160(0xACC0 + (i % POOL)));
    }

    /// Keys overlap with accounts for the first few entries (an account may be another's key).
    function keyAt(uint256 i) public pure returns (address) {
        uint256 j = i % POOL;
        return j < 3 ? address(uint160(0xACC0 + j)) : address(uint160(0xE400 + j));
    }

    function idAt(uint256 i) public pure returns (bytes32) {
        return bytes32(uint256(0x1D00 + (i % POOL)));
    }

    function _reg(uint256 a, uint256 k, uint256 i, uint8 kind) internal pure returns (IParticipantRegistry.Registration memory) {
        return IParticipantRegistry.Registration({account: accountAt(a), meterId: idAt(i), meterKey: keyAt(k), kind: _kind(kind)});
    }

    function register(uint8 a, uint8 k, uint8 i, uint8 kind) external {
        try registry.register(_reg(a, k, i, kind)) {
            ghostRegistered += 1;
        } catch {}
    }

    function registerBatch(uint8[2] calldata a, uint8[2] calldata k, uint8[2] calldata i, uint8[2] calldata kind) external {
        IParticipantRegistry.Registration[] memory rs = new IParticipantRegistry.Registration[](2);
        rs[0] = _reg(a[0], k[0], i[0], kind[0]);
        rs[1] = _reg(a[1], k[1], i[1], kind[1]);
        try registry.registerBatch(rs) {
            ghostRegistered += 2;
        } catch {}
    }

    function setMeterKey(uint8 a, uint8 k) external {
        try registry.setMeterKey(accountAt(a), keyAt(k)) {
            ghostRekeyed += 1;
        } catch {}
    }

    function suspend(uint8 a) external {
        try registry.suspend(accountAt(a)) {} catch {}
    }

    function reactivate(uint8 a) external {
        try registry.reactivate(accountAt(a)) {} catch {}
    }
}

/// Invariants over random sequences of handler calls.
/// forge-config: default.invariant.runs = 64
/// forge-config: default.invariant.depth = 64
contract ParticipantRegistryInvariantTest is ParticipantRegistryTestBase {
    ParticipantRegistry internal registry;
    ParticipantRegistryHandler internal handler;

    function setUp() public {
        registry = new ParticipantRegistry(address(this));
        handler = new ParticipantRegistryHandler(registry);
        registry.grantRole(registry.REGULATOR_ROLE(), address(handler));
    }

    /// Only the handler is called by the fuzzer (Foundry's targetContracts() convention).
    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    function invariant_countMatchesSuccessfulRegistrations() public view {
        require(registry.participantCount() == handler.ghostRegistered(), "count != successful registrations");
    }

    /// Indices 0..count-1 are dense and each record's lookups agree with it.
    function invariant_indicesDenseAndLookupsConsistent() public view {
        uint256 n = registry.participantCount();
        for (uint256 i = 0; i < n; ++i) {
            _requireConsistent(registry, registry.participantAt(i), i);
        }
    }

    /// No stale mapping: a key or id that maps to an account is that account's current key or id,
    /// and every pool account is either unregistered or indexed at its own position.
    function invariant_noStaleKeyOrIdMappings() public view {
        uint256 pool = handler.poolSize();
        for (uint256 i = 0; i < pool; ++i) {
            address key = handler.keyAt(i);
            address holder = registry.accountOfMeterKey(key);
            if (holder != address(0)) {
                require(registry.participant(holder).meterKey == key, "a key maps to an account that no longer uses it");
            }
            bytes32 id = handler.idAt(i);
            address owner = registry.accountOfMeterId(id);
            if (owner != address(0)) {
                require(registry.participant(owner).meterId == id, "an id maps to an account that does not own it");
            }
            address account = handler.accountAt(i);
            IParticipantRegistry.Participant memory p = registry.participant(account);
            if (p.status != IParticipantRegistry.Status.None) {
                require(registry.participantAt(p.index) == account, "registered account not at its index");
            } else {
                require(!registry.isActive(account), "unregistered account is active");
            }
        }
    }

    function invariant_atMostOneSlackUnit() public view {
        address slack = registry.slackUnit();
        uint256 n = registry.participantCount();
        uint256 slackUnits;
        for (uint256 i = 0; i < n; ++i) {
            address account = registry.participantAt(i);
            if (registry.participant(account).kind == IParticipantRegistry.Kind.SlackUnit) {
                slackUnits += 1;
                require(account == slack, "a slack unit participant is not slackUnit()");
            }
        }
        require(slackUnits == (slack == address(0) ? 0 : 1), "slack unit count");
    }
}
