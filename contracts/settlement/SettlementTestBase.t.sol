// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {EnergyToken} from "../token/EnergyToken.sol";
import {IParticipantRegistry} from "../registry/IParticipantRegistry.sol";
import {ParticipantRegistry} from "../registry/ParticipantRegistry.sol";
import {IMeterLedger} from "../metering/IMeterLedger.sol";
import {ISettlement} from "./ISettlement.sol";
import {Settlement} from "./Settlement.sol";
import {TestScheduleSource} from "../test/TestScheduleSource.sol";

// Shared base of the Solidity tests of the metering and settlement contracts, run by
// `npx hardhat test solidity`. forge-std is not available here, so the few cheatcodes these tests
// need are declared below and called at Hardhat's cheatcode address; checks are plain `require`s
// and expected reverts are caught with try/catch and compared with the exact custom error.

bytes32 constant BILLED_TOPIC = keccak256("Billed(address,uint32,int256,uint256,int256,uint256)");
bytes32 constant SLOT_CLOSED_TOPIC = keccak256("SlotClosed(uint32,uint256,uint256,uint256,int256)");
bytes32 constant SCHEDULE_PAID_TOPIC = keccak256("SchedulePaid(uint32,address,uint256)");
bytes32 constant WITHDRAWN_TOPIC = keccak256("Withdrawn(address,uint256)");
bytes32 constant TRANSFER_TOPIC = keccak256("Transfer(address,address,uint256)");
bytes32 constant DEPOSITED_TOPIC = keccak256("Deposited(address,address,uint256)");
bytes32 constant DEBT_REPAID_TOPIC = keccak256("DebtRepaid(address,uint256,uint256)");

/// @dev The cheatcodes the tests use (Foundry-compatible, served by Hardhat's EDR).
interface SettlementCheats {
    struct Log {
        bytes32[] topics;
        bytes data;
        address emitter;
    }

    function warp(uint256 timestamp) external;
    function sign(uint256 privateKey, bytes32 digest) external returns (uint8 v, bytes32 r, bytes32 s);
    function addr(uint256 privateKey) external returns (address);
    function prank(address sender) external;
    function recordLogs() external;
    function getRecordedLogs() external returns (Log[] memory);
}

/// @dev A market: token, registry and settlement, `N` prosumers with meter keys, and a slack unit.
/// The contract that inherits this is the admin, regulator, master and minter.
abstract contract SettlementTestBase {
    SettlementCheats internal constant vm = SettlementCheats(0x7109709ECfa91a80626fF3989D68f67F5b1DD12D);

    uint256 internal constant N = 4;
    uint256 internal constant SLOT_SECONDS = 900;
    uint256 internal constant WINDOW = 300;
    uint256 internal constant FEED_IN = 50_000;
    uint256 internal constant RETAIL = 300_000;
    uint256 internal constant ONE = 1e6;
    uint256 internal constant START = 1_700_000_000;

    EnergyToken internal token;
    ParticipantRegistry internal registry;
    Settlement internal settlement;
    address[N] internal accounts;
    uint256[N] internal keys;
    address internal slack;
    /// @dev A participant that never reads and only holds a large deposit: escrow liquidity, so that
    /// sellers can be paid before the buyers of their slot (see the Settlement.test.ts case where it lacks).
    address internal reserve;
    uint256 internal constant RESERVE = 100_000 * ONE;
    /// @dev The first slot whose readings are still ahead when the test starts.
    uint32 internal firstSlot;
    /// @dev The test schedule source standing in for the day-ahead market, once `_useScheduleSource` ran.
    TestScheduleSource internal source;

    // What the test's own meters and schedules say per slot, and what the bills said (see `_consume`).
    /// @dev The schedule the source holds for accounts[i] in a slot, and the slot's price.
    mapping(uint32 slot => mapping(uint256 i => int256)) internal awardOf;
    mapping(uint32 slot => uint256) internal awardPrice;
    /// @dev Sums of positive and of negative deviations (metered net - covered schedules) of counted readings.
    mapping(uint32 slot => uint256) public meterDemand;
    mapping(uint32 slot => uint256) public meterSupply;
    mapping(uint32 slot => uint256) public meterReadings;
    mapping(uint32 slot => mapping(uint256 i => bool)) internal countedReading;
    /// @dev Per counted reading: its metered net energy, and the deviation and scheduled earnings the
    /// awards it covers give (its slot and the missed ones, at most MAX_SCHEDULE_GAP back).
    mapping(uint32 slot => mapping(uint256 i => int256)) internal readingNet;
    mapping(uint32 slot => mapping(uint256 i => int256)) internal expectedDeviation;
    mapping(uint32 slot => mapping(uint256 i => uint256)) internal expectedEarned;
    /// @dev Whether an award was covered by a counted reading, and what each account's covered sales earn.
    mapping(uint32 slot => mapping(uint256 i => bool)) internal awardCovered;
    mapping(uint256 i => uint256) internal coveredSales;
    mapping(uint256 i => uint256) internal paidSales;
    uint32 internal constant MAX_SCHEDULE_GAP = 8;
    /// @dev Per slot: bills net of shortfalls, bills, scheduled revenue paid with them, schedule payments.
    mapping(uint32 slot => int256) public billedNetTokens;
    mapping(uint32 slot => uint256) public billedCount;
    mapping(uint32 slot => uint256) public scheduledRevenuePaid;
    mapping(uint32 slot => uint256) public schedulePaid;
    mapping(uint32 slot => mapping(address account => uint256)) public billsOf;
    mapping(address account => int256) internal billedWh;
    /// @dev Each participant's deposit when `_consume` (or `_seeDeposits`) last looked.
    uint256[N] internal seenDeposit;
    /// @dev The first broken rule `_consume` saw, empty if none.
    string public violation;
    uint256 public slotsClosed;
    uint256 public scheduledSellerBills;

    function _deployMarket() internal {
        vm.warp(START);
        token = new EnergyToken("Feeder 7 Energy Token", "kWhT", address(this));
        registry = new ParticipantRegistry(address(this));
        settlement = new Settlement(token, registry, address(this), SLOT_SECONDS, WINDOW, FEED_IN, RETAIL);
        for (uint256 i = 0; i < N; ++i) {
            keys[i] = 0xA11CE + i;
            accounts[i] = address(uint160(0x10000 + i));
            registry.register(
                IParticipantRegistry.Registration({
                    account: accounts[i],
                    meterId: bytes32(i + 1),
                    meterKey: vm.addr(keys[i]),
                    kind: IParticipantRegistry.Kind.Prosumer
                })
            );
        }
        slack = address(0x5AC4);
        registry.register(
            IParticipantRegistry.Registration({
                account: slack,
                meterId: bytes32("slack"),
                meterKey: vm.addr(0x5AC4),
                kind: IParticipantRegistry.Kind.SlackUnit
            })
        );
        reserve = address(0x7E5E);
        registry.register(
            IParticipantRegistry.Registration({
                account: reserve,
                meterId: bytes32("reserve"),
                meterKey: vm.addr(0x7E5E),
                kind: IParticipantRegistry.Kind.Consumer
            })
        );
        token.approve(address(settlement), type(uint256).max);
        firstSlot = uint32(block.timestamp / SLOT_SECONDS) + 1;
    }

    /// @dev Deploys the test schedule source and makes it settlement's (which grants it MARKET_ROLE).
    function _useScheduleSource() internal {
        source = new TestScheduleSource(token, settlement);
        settlement.setScheduleSource(source);
    }

    /// @dev Day-ahead awards of `slot` at `price` (`q[i]` for accounts[i]: + bought, - sold), recorded by
    /// the source as a clearing would; the buyers' costs, ceil(q * price / 1000) each, are minted to the
    /// source (their escrow) and paid into the slot's pool. Returns what was paid.
    function _schedule(uint32 slot, int256[N] memory q, uint256 price) internal returns (uint256 paid) {
        address[] memory list = new address[](N);
        int256[] memory nets = new int256[](N);
        for (uint256 i = 0; i < N; ++i) {
            list[i] = accounts[i];
            nets[i] = q[i];
            awardOf[slot][i] = q[i];
            if (q[i] > 0) paid += (uint256(q[i]) * price + 999) / 1000;
        }
        awardPrice[slot] = price;
        source.setSchedules(slot, list, nets, price);
        if (paid > 0) {
            token.mint(address(source), paid);
            source.pay(slot, paid);
        }
    }

    /// @dev Balanced awards from fuzzed sizes: accounts whose bit in `sellerMask` is set sell, the
    /// others buy `sizes[i] * scale` Wh; the buyers' total is shared among the sellers in proportion to
    /// their sizes (the last seller takes the remainder). No award if a side is empty.
    function _balancedAwards(uint8 sellerMask, uint16[N] memory sizes, uint256 scale) internal pure returns (int256[N] memory q) {
        uint256 bought;
        uint256 weights;
        uint256 lastSeller = N;
        for (uint256 i = 0; i < N; ++i) {
            if ((sellerMask >> i) & 1 == 1) {
                weights += uint256(sizes[i]) + 1;
                lastSeller = i;
            } else {
                bought += uint256(sizes[i]) * scale;
            }
        }
        if (lastSeller == N || bought == 0) return q;
        uint256 sold;
        for (uint256 i = 0; i < N; ++i) {
            if ((sellerMask >> i) & 1 == 0) {
                q[i] = int256(uint256(sizes[i]) * scale);
            } else if (i == lastSeller) {
                q[i] = -int256(bought - sold);
            } else {
                uint256 share = bought * (uint256(sizes[i]) + 1) / weights;
                sold += share;
                q[i] = -int256(share);
            }
        }
    }

    /// @dev floor(|q| * P / 1000) for a scheduled sale of accounts[i] in `slot`, 0 otherwise.
    function _scheduledRevenue(uint32 slot, uint256 i) internal view returns (uint256) {
        int256 q = awardOf[slot][i];
        return q < 0 ? uint256(-q) * awardPrice[slot] / 1000 : 0;
    }

    /// @dev Counts a reading of accounts[i] in `slot` that carried `net` Wh since its last reading in
    /// `lastSlot` into the test's own totals: it covers the awards of the slots since (at most
    /// MAX_SCHEDULE_GAP back), and its deviation is `net` minus them.
    function _countMeter(uint32 lastSlot, uint32 slot, uint256 i, int256 net) internal {
        uint32 from = slot - lastSlot > MAX_SCHEDULE_GAP ? slot + 1 - MAX_SCHEDULE_GAP : lastSlot + 1;
        int256 d = net;
        uint256 earned;
        for (uint32 k = from; k <= slot; ++k) {
            d -= awardOf[k][i];
            earned += _scheduledRevenue(k, i);
            if (awardOf[k][i] != 0) {
                if (awardCovered[k][i]) _violate("an award covered twice");
                awardCovered[k][i] = true;
            }
        }
        coveredSales[i] += earned;
        if (d > 0) meterDemand[slot] += uint256(d);
        else if (d < 0) meterSupply[slot] += uint256(-d);
        meterReadings[slot] += 1;
        countedReading[slot][i] = true;
        readingNet[slot][i] = net;
        expectedDeviation[slot][i] = d;
        expectedEarned[slot][i] = earned;
    }

    function _violate(string memory why) internal {
        if (bytes(violation).length == 0) violation = why;
    }

    function _requireNoViolation() internal view {
        require(bytes(violation).length == 0, violation);
    }

    /// @dev The index of `account` among the participants that read, or N.
    function _indexOf(address account) internal view returns (uint256) {
        for (uint256 i = 0; i < N; ++i) if (accounts[i] == account) return i;
        return N;
    }

    /**
     * @dev Checks the logs of one call against the test's meters and schedules (records the first
     * broken rule in `violation`): every bill is of a counted reading, carries the deviation and the
     * scheduled earnings (floor(|q| * P / 1000) per covered sale) the meters and awards give, and is
     * the only one of its account and slot. Each participant's deposit moved by exactly what the
     * call's events say: its deposits, less its withdrawals and the debt it repaid, plus for each
     * bill its earnings less what its deviation cost (what it could not pay stays as debt); and
     * settlement sent it tokens only when it withdrew (earnings are paid into deposits). Every closed
     * slot conserves energy on deviations (D + absorbed == U + supplied, from the meters and the
     * schedules) and tokens (schedule payments + bills net of shortfalls - scheduled revenue == the
     * slack unit's residual), and had all its readings billed.
     */
    function _consume(SettlementCheats.Log[] memory logs) internal {
        int256[N] memory change; // of each participant's deposit, by the events
        uint256[N] memory sent; // token transfers from settlement to each participant
        uint256[N] memory withdrawn;
        for (uint256 j = 0; j < logs.length; ++j) {
            SettlementCheats.Log memory log = logs[j];
            if (log.topics.length < 2) continue;
            uint256 i = _indexOf(address(uint160(uint256(log.topics[1]))));
            if (log.emitter == address(token) && log.topics[0] == TRANSFER_TOPIC) {
                uint256 k = _indexOf(address(uint160(uint256(log.topics[2]))));
                if (i == N && address(uint160(uint256(log.topics[1]))) == address(settlement) && k < N) {
                    sent[k] += abi.decode(log.data, (uint256));
                }
                continue;
            }
            if (log.emitter != address(settlement)) continue;
            bytes32 topic = log.topics[0];
            if (topic == BILLED_TOPIC) {
                _consumeBill(log, change);
            } else if (topic == DEPOSITED_TOPIC && i < N) {
                change[i] += int256(abi.decode(log.data, (uint256)));
            } else if (topic == WITHDRAWN_TOPIC && i < N) {
                uint256 amount = abi.decode(log.data, (uint256));
                change[i] -= int256(amount);
                withdrawn[i] += amount;
            } else if (topic == DEBT_REPAID_TOPIC && i < N) {
                (uint256 repaid,) = abi.decode(log.data, (uint256, uint256));
                change[i] -= int256(repaid);
            } else if (topic == SLOT_CLOSED_TOPIC) {
                uint32 slot = uint32(uint256(log.topics[1]));
                (uint256 localWh, uint256 supplied, uint256 absorbed, int256 slackAmount) =
                    abi.decode(log.data, (uint256, uint256, uint256, int256));
                slotsClosed += 1;
                if (meterDemand[slot] + absorbed != meterSupply[slot] + supplied) _violate("energy not conserved in a slot");
                if (localWh > meterDemand[slot] || localWh > meterSupply[slot]) _violate("local energy beyond D or U");
                if (int256(schedulePaid[slot]) + billedNetTokens[slot] - int256(scheduledRevenuePaid[slot]) != slackAmount) {
                    _violate("schedule payments + bills - shortfalls - scheduled revenue != slack residual");
                }
                if (billedCount[slot] != meterReadings[slot]) _violate("slot closed before all readings were billed");
                if (meterReadings[slot] == 0 && schedulePaid[slot] == 0) _violate("a slot without readings or payments closed");
            } else if (topic == SCHEDULE_PAID_TOPIC) {
                schedulePaid[uint32(uint256(log.topics[1]))] += abi.decode(log.data, (uint256));
            }
        }
        for (uint256 i = 0; i < N; ++i) {
            if (sent[i] != withdrawn[i]) _violate("settlement sent a participant tokens it did not withdraw");
            uint256 deposit = settlement.accountState(accounts[i]).deposit;
            if (int256(deposit) - int256(seenDeposit[i]) != change[i]) {
                _violate("deposit change != deposits - withdrawals - debt repaid + earnings - deviation paid");
            }
            seenDeposit[i] = deposit;
        }
    }

    /// @dev Takes the participants' deposits as they are now (call after vm.recordLogs()).
    function _seeDeposits() internal {
        for (uint256 i = 0; i < N; ++i) seenDeposit[i] = settlement.accountState(accounts[i]).deposit;
    }

    function _consumeBill(SettlementCheats.Log memory log, int256[N] memory change) private {
        address account = address(uint160(uint256(log.topics[1])));
        uint32 slot = uint32(uint256(log.topics[2]));
        (int256 deviationWh, uint256 earned, int256 amount, uint256 shortfall) =
            abi.decode(log.data, (int256, uint256, int256, uint256));
        uint256 i = _indexOf(account);
        if (i == N || !countedReading[slot][i]) {
            _violate("billed without a counted reading");
            return;
        }
        if (billsOf[slot][account] > 0) _violate("an account billed twice for a slot");
        billsOf[slot][account] += 1;
        if (deviationWh != expectedDeviation[slot][i]) _violate("the bill's deviation is not the meters' less the covered awards");
        if (earned != expectedEarned[slot][i]) _violate("the bill's scheduled earnings are not the covered sales'");
        if (shortfall > 0 && amount <= 0) _violate("a shortfall on a bill that asked for nothing");
        // Earnings and revenue go into the deposit; the deviation's cost comes out of it (and out of
        // the earnings first), except what could not be paid.
        change[i] += int256(earned) - amount + int256(shortfall);
        if (earned > 0) scheduledSellerBills += 1;
        paidSales[i] += earned;
        billedNetTokens[slot] += amount - int256(shortfall);
        billedCount[slot] += 1;
        scheduledRevenuePaid[slot] += earned;
        billedWh[account] += readingNet[slot][i];
    }

    function _bound(uint256 x, uint256 min, uint256 max) internal pure returns (uint256) {
        require(min <= max, "bound: min > max");
        return min + (x % (max - min + 1));
    }

    /// @dev Mints `amount` to this contract and deposits it for `account`.
    function _fund(address account, uint256 amount) internal {
        if (amount == 0) return;
        token.mint(address(this), amount);
        settlement.depositFor(account, amount);
    }

    function _opens(uint32 slot) internal pure returns (uint256) {
        return (uint256(slot) + 1) * SLOT_SECONDS;
    }

    function _deadline(uint32 slot) internal pure returns (uint256) {
        return (uint256(slot) + 1) * SLOT_SECONDS + WINDOW;
    }

    /// @dev Signs `r` with `key` and returns the EIP-2098 compact signature.
    function _sign(uint256 key, IMeterLedger.Reading memory r) internal returns (bytes32 sigR, bytes32 vs) {
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(key, settlement.readingDigest(r));
        sigR = rr;
        vs = bytes32(uint256(s) | (uint256(v - 27) << 255));
    }

    function _reading(uint256 i, uint32 slot, uint64 importWh, uint64 exportWh)
        internal
        view
        returns (IMeterLedger.Reading memory)
    {
        return IMeterLedger.Reading({account: accounts[i], slot: slot, importWh: importWh, exportWh: exportWh});
    }

    /// @dev Signs and submits participant `i`'s reading at the current time.
    function _submit(uint256 i, uint32 slot, uint64 importWh, uint64 exportWh) internal {
        IMeterLedger.Reading memory r = _reading(i, slot, importWh, exportWh);
        (bytes32 sigR, bytes32 vs) = _sign(keys[i], r);
        settlement.submitReading(r, sigR, vs);
    }

    /// @dev Calls submitReading and returns its revert data (empty if it succeeded).
    function _trySubmit(IMeterLedger.Reading memory r, bytes32 sigR, bytes32 vs) internal returns (bytes memory) {
        try settlement.submitReading(r, sigR, vs) {
            return "";
        } catch (bytes memory reason) {
            return reason;
        }
    }

    function _requireError(bytes memory reason, bytes memory expected, string memory message) internal pure {
        require(reason.length > 0, string.concat(message, ": did not revert"));
        require(keccak256(reason) == keccak256(expected), message);
    }

    function _allAccounts() internal view returns (address[] memory list) {
        list = new address[](N);
        for (uint256 i = 0; i < N; ++i) list[i] = accounts[i];
    }

    /// @dev token.balanceOf(settlement) + badDebt == totalDeposits + openPool.
    function _requireIdentity(string memory where) internal view {
        int256 lhs = int256(token.balanceOf(address(settlement)) + settlement.badDebt());
        int256 rhs = int256(settlement.totalDeposits()) + settlement.openPool();
        require(lhs == rhs, string.concat("escrow identity broken: ", where));
    }

    /// @dev Every token is in one of the wallets the test knows, or in escrow.
    function _requireSupply(string memory where) internal view {
        uint256 sum = token.balanceOf(address(this)) + token.balanceOf(address(settlement)) + token.balanceOf(slack)
            + token.balanceOf(reserve) + token.balanceOf(address(source));
        for (uint256 i = 0; i < N; ++i) sum += token.balanceOf(accounts[i]);
        require(sum == token.totalSupply(), string.concat("sum of balances != total supply: ", where));
    }

    /// @dev The sum of every deposit equals totalDeposits.
    function _requireDepositsSum(string memory where) internal view {
        uint256 sum = settlement.accountState(slack).deposit + settlement.accountState(reserve).deposit;
        for (uint256 i = 0; i < N; ++i) sum += settlement.accountState(accounts[i]).deposit;
        require(sum == settlement.totalDeposits(), string.concat("sum of deposits != totalDeposits: ", where));
    }
}
